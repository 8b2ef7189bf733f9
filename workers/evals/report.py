"""What ``agentworker eval`` prints: progress, the metrics against the thresholds, the
failures; and the thresholds file (``evals/thresholds.toml``)."""

from __future__ import annotations

import sys
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from workers.errors import ConfigError
from workers.evals.scorers import METRICS, RATE_METRICS, CaseResult
from workers.evals.tracking import Delta
from workers.tables import preview, text_table


@dataclass(frozen=True)
class Thresholds:
    """Per metric, the least (``[min]``) or most (``[max]``) value a release may have."""

    minimum: Mapping[str, float]
    maximum: Mapping[str, float]

    def check(self, metrics: Mapping[str, float]) -> dict[str, str]:
        """Per metric with a threshold: ``ok``, ``FAIL`` or ``not measured``."""
        verdicts: dict[str, str] = {}
        for name in sorted({*self.minimum, *self.maximum}):
            value = metrics.get(name)
            if value is None:
                verdicts[name] = "not measured"
                continue
            low, high = self.minimum.get(name), self.maximum.get(name)
            good = (low is None or value >= low) and (high is None or value <= high)
            verdicts[name] = "ok" if good else "FAIL"
        return verdicts

    def bound(self, name: str) -> str:
        parts = []
        if name in self.minimum:
            parts.append(f">= {self.minimum[name]:g}")
        if name in self.maximum:
            parts.append(f"<= {self.maximum[name]:g}")
        return ", ".join(parts)


NO_THRESHOLDS = Thresholds({}, {})


def read_thresholds(path: Path) -> Thresholds:
    """``[min]`` and ``[max]`` tables of metric = number; ``ConfigError`` (exit 2) for a
    file that does not parse, another table, an unknown metric or a value that is no number."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"thresholds {path}: {exc}") from None
    unknown_tables = sorted(set(data) - {"min", "max"})
    if unknown_tables:
        raise ConfigError(
            f"thresholds {path}: unknown key {unknown_tables[0]!r}; use [min] and [max] tables"
        )
    tables: dict[str, dict[str, float]] = {}
    for table in ("min", "max"):
        raw = data.get(table, {})
        if not isinstance(raw, dict):
            raise ConfigError(f"thresholds {path}: [{table}] must be a table")
        for name, value in raw.items():
            if name not in METRICS:
                raise ConfigError(
                    f"thresholds {path}: unknown metric {name!r} in [{table}]; the metrics are"
                    f" {', '.join(METRICS)}"
                )
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"thresholds {path}: {table}.{name} = {value!r} is no number")
        tables[table] = {k: float(v) for k, v in raw.items()}
    return Thresholds(tables["min"], tables["max"])


class Progress:
    """``[12/45] 26% support-faq-1 passed`` on one line of ``stream`` (rewritten with ``\\r``
    on a terminal, every tenth case otherwise)."""

    def __init__(self, total: int, stream: TextIO | None = None) -> None:
        self.total = total
        self.done = 0
        self.failed = 0
        self._stream = stream or sys.stderr
        self._tty = self._stream.isatty()

    def __call__(self, result: CaseResult) -> None:
        self.done += 1
        self.failed += result.status != "passed"
        line = (
            f"[{self.done}/{self.total}] {100 * self.done // max(1, self.total):3d}%"
            f"  {self.failed} not passed  last: {result.case.id} {result.status}"
        )
        if self._tty:
            self._stream.write("\r" + line[:120].ljust(120))
        elif self.done == self.total or self.done % 10 == 0:
            self._stream.write(line + "\n")
        self._stream.flush()

    def close(self) -> None:
        if self._tty:
            self._stream.write("\n")
            self._stream.flush()


def _figure(name: str, value: float | None) -> str:
    if value is None:
        return "-"
    if name in RATE_METRICS:
        return f"{value:.3f}"
    if name == "cost_usd":
        return f"{value:.6f}"
    return f"{value:g}" if float(value).is_integer() else f"{value:.1f}"


def metrics_table(metrics: Mapping[str, float], thresholds: Thresholds) -> str:
    verdicts = thresholds.check(metrics)
    rows = [
        [name, _figure(name, metrics.get(name)), thresholds.bound(name), verdicts.get(name, "")]
        for name in METRICS
        if name in metrics or name in verdicts
    ]
    return text_table(["metric", "value", "threshold", "verdict"], rows)


def failures_table(results: Sequence[CaseResult]) -> str:
    rows = [
        [r.case.id, r.status, preview(reason, 100)]
        for r in results
        if r.status != "passed"
        for reason in r.failures() or ["(no reason)"]
    ]
    return text_table(["case", "status", "why"], rows) if rows else ""


def compare_table(deltas: Sequence[Delta]) -> str:
    rows = []
    for d in deltas:
        change = d.change
        shown = "-" if change is None else f"{change:+.4g}"
        rows.append([d.metric, _figure(d.metric, d.a), _figure(d.metric, d.b), shown])
    return text_table(["metric", "run A", "run B", "delta"], rows)
