"""Tracing off the turn's path: :mod:`.recorder` (the Tracer port, in memory), :mod:`.spool`
and :mod:`.exporter` (embedded: a spool file and an exporter process), :mod:`.direct` (Lambda),
:mod:`.mlflow_export` (records into MLflow)."""
