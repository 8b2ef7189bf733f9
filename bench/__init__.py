"""Benchmarks of the embedded runtime (``make bench`` = ``python -m bench``).

Three measurements, all offline, loopback-only and in temporary directories:

* ``overhead``: the worker's own cost per turn (accept + drive_run minus the model's time),
  tracing off and on, plus store calls and SQL statements per turn;
* ``throughput``: turns/s through the real ``EmbeddedRuntime`` for model latencies and pool
  sizes, next to the ideal ``min(W, conversations) / L``;
* ``storage``: bytes written to SQLite per turn at growing conversation lengths, ours vs a
  plain LangGraph ``SqliteSaver`` graph doing the same turns.

Every number printed is measured in the run; the full results go to
``bench/results/embedded-<UTC timestamp>.json``.
"""
