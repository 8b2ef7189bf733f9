"""``python -m reliability [--size full|small] [--out docs/RELIABILITY.md]``: run the
reliability suite, print the report, write it; exit 1 on any violation."""

from __future__ import annotations

import argparse
import logging
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from reliability import (
    concurrency,
    dependencies,
    inprocess,
    killnine,
    schedules,
    webhooks,
    window,
    workflow,
)
from reliability.report import Fuzz, Run, render

ROOT = Path(__file__).resolve().parents[1]
FUZZERS = ("tests/unit/test_fuzz_aws.py", "tests/functional/test_fuzz_local.py")
FUZZ_CASES = {"full": 5000, "small": 2000}


def progress(line: str) -> None:
    print(f"  {line}", file=sys.stderr, flush=True)


def fuzz(cases: int) -> Fuzz:
    """The hostile-input fuzzers of every entry point (``tests/fuzz.py``), ``cases`` each."""
    started = time.perf_counter()
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-o",
            "addopts=",
            "-v",
            "-p",
            "no:cacheprovider",
            *FUZZERS,
        ],
        cwd=ROOT,
        env={**os.environ, "AGENTWORKER_FUZZ_CASES": str(cases)},
        capture_output=True,
        text=True,
        check=False,
    )
    tests = re.findall(r"^(tests/\S+::\S+) (PASSED|FAILED|ERROR)", out.stdout, re.M)
    if not tests:
        sys.stderr.write(out.stdout[-3000:] + out.stderr[-3000:])
    return Fuzz(
        cases=cases,
        entry_points=[f"`{name.split('/')[-1]}` {state.lower()}" for name, state in tests],
        passed=out.returncode == 0 and bool(tests),
        seconds=time.perf_counter() - started,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reliability", description=__doc__)
    parser.add_argument("--size", choices=("full", "small"), default="full")
    parser.add_argument("--out", type=Path, default=None, help="where to write the report")
    parser.add_argument("--no-fuzz", action="store_true", help="skip the fuzzers")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    os.environ.setdefault("MLFLOW_MODEL_CATALOG_URI", "")
    every = args.size == "full"
    size = concurrency.FULL if every else concurrency.SMALL
    run = Run(size=args.size, concurrency_size=size)
    started = time.perf_counter()

    def faults_in_process() -> None:
        run.faults.append(inprocess.run(every=every, progress=progress))

    def kill_nine() -> None:
        run.faults.append(killnine.run(every=every, progress=progress))

    def faults_on_aws() -> None:
        run.faults.append(workflow.run(every=every, progress=progress))

    def fencing_window() -> None:
        run.window.append(window.run(every=every, progress=progress))

    def dependency_faults() -> None:
        run.dependencies.extend(dependencies.run(every=every, progress=progress))

    def concurrent_senders() -> None:
        run.concurrency.extend(concurrency.run(size, progress=progress))

    def timers() -> None:
        run.outbound.append(schedules.run(every=every, progress=progress))
        run.outbound.append(schedules.run_aws(every=every, progress=progress))
        run.outbound.append(webhooks.run(every=every, progress=progress))
        run.outbound.append(webhooks.run_aws(every=every, progress=progress))

    def fuzzers() -> None:
        run.fuzz = fuzz(FUZZ_CASES[args.size])

    stages: list[tuple[str, Callable[[], None]]] = [
        ("faults in-process", faults_in_process),
        ("kill -9 of the embedded server", kill_nine),
        ("faults on AWS (moto)", faults_on_aws),
        ("the fencing window on AWS (production timeouts)", fencing_window),
        ("dependency faults", dependency_faults),
        ("concurrency", concurrent_senders),
        ("schedules and webhooks", timers),
    ]
    if not args.no_fuzz:
        stages.append(("fuzzers", fuzzers))
    for name, stage in stages:
        print(f"reliability: {name}", file=sys.stderr, flush=True)
        stage()
    run.seconds = time.perf_counter() - started
    report = render(run)
    print(report)
    if args.out is not None:
        args.out.write_text(report)
        print(f"reliability: wrote {args.out}", file=sys.stderr)
    return 0 if run.ok else 1


if __name__ == "__main__":
    sys.exit(main())
