"""The stack's Lambda layers, built for the Lambda platform (python3.12, arm64) from the
versions installed in this venv, and the unzipped size of every function with its layers.

``light`` (pydantic, pydantic-settings, Powertools, slack_sdk, croniter and tzdata for the
schedules, standardwebhooks for the webhooks) serves every function; ``agent``
(LangGraph, langchain-aws, mlflow-tracing and their closure) only ``turn`` and ``feedback``
(which logs ratings to MLflow), without what ``workers/packaging.py`` excludes; ``app`` (the
package of the app's graph and its settings, ``deploy/app.py``) only ``turn``. boto3 and its
dependencies are the Lambda runtime's. ``python -m deploy.layers`` builds them into
``build/layers/<name>/python`` (what ``serverless.yml`` packages) and fails, naming the
function, when one is over the limit.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

from deploy.closure import closure
from workers.packaging import excluded
from workers.stack import FUNCTIONS

ROOT = Path(__file__).resolve().parents[1]
LAYER_ROOTS: dict[str, tuple[str, ...]] = {
    "light": (
        "aws-lambda-powertools",
        "pydantic-settings",
        "slack-sdk",
        "croniter",
        "tzdata",
        "standardwebhooks",
    ),
    "agent": ("agentworker",),
    "auth": ("pyjwt", "cryptography"),
}
APP_LAYER = "app"
LAYERS = (*LAYER_ROOTS, APP_LAYER)
FUNCTION_LAYERS: dict[str, tuple[str, ...]] = dict.fromkeys(FUNCTIONS, ("light",)) | {
    "turn": ("light", "agent", APP_LAYER),
    "api": ("light", "agent", APP_LAYER),
    "feedback": ("light", "agent"),
    "authorizer": ("light", "auth"),
}
RUNTIME_PROVIDED = frozenset(
    {"boto3", "botocore", "s3transfer", "jmespath", "python-dateutil", "urllib3", "six"}
)
"""In the Lambda Python 3.12 runtime already."""
OWN_CODE = ("agentworker", "workers", "events")
NOT_SHIPPED = ("sandbox",)
"""Directories of our code left out of every function (serverless.yml's package patterns)."""
LIMIT_BYTES = 250 * 1024 * 1024
"""Lambda's limit: a function and its layers, unzipped."""
GOAL_BYTES = 150 * 1024 * 1024
PLATFORM = ("--platform", "manylinux2014_aarch64", "--implementation", "cp")
PYTHON_VERSION = "3.12"


def requirements() -> dict[str, list[str]]:
    """Each layer's pinned requirements (``name==version`` as installed here)."""
    light = {n: d for root in LAYER_ROOTS["light"] for n, d in closure(root).items()}
    skip = set(RUNTIME_PROVIDED) | set(excluded("turn")) | {"agentworker"}
    agent = {n: d for n, d in closure("agentworker").items() if n not in light and n not in skip}
    # The authorizer verifies tokens: PyJWT with cryptography (RS256/ES256), which turn
    # leaves out.
    auth = {
        n: d
        for root in LAYER_ROOTS["auth"]
        for n, d in closure(root).items()
        if n not in light and n not in RUNTIME_PROVIDED
    }
    return {
        "light": sorted(f"{n}=={d.version}" for n, d in light.items() if n not in skip),
        "agent": sorted(f"{n}=={d.version}" for n, d in agent.items()),
        "auth": sorted(f"{n}=={d.version}" for n, d in auth.items()),
    }


def build(out: Path) -> None:
    """Install every layer into ``out/<layer>/python`` for the Lambda platform, the layers'
    installs at once (each is one pip run that mostly waits on files)."""
    runs: list[tuple[str, subprocess.Popen[bytes]]] = []
    for layer, pins in requirements().items():
        target = out / layer
        shutil.rmtree(target, ignore_errors=True)
        print(f"layer {layer}: {len(pins)} distributions", flush=True)
        command = [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-deps",
            "--no-compile",
            "--only-binary=:all:",
            *PLATFORM,
            "--python-version",
            PYTHON_VERSION,
            "--target",
            str(target / "python"),
            *pins,
        ]
        runs.append((layer, subprocess.Popen(command)))
    failed = [layer for layer, run in runs if run.wait() != 0]
    if failed:
        raise SystemExit(f"layers: pip could not install layer {', '.join(failed)}")


def build_app(out: Path) -> None:
    """The ``app`` layer: the package of the app's graph (``deploy/app.py``)."""
    from deploy import app

    bundle = app.resolve(app.main_settings())
    app.build_layer(bundle, out / APP_LAYER)
    print(f"layer {APP_LAYER}: {bundle.graph} (package {bundle.package} from {bundle.source})")


def tree_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def code_size() -> int:
    return sum(
        p.stat().st_size
        for top in OWN_CODE
        for p in (ROOT / top).rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and not set(NOT_SHIPPED) & set(p.parts)
    )


def function_sizes(out: Path) -> dict[str, int]:
    """Unzipped bytes of each function: our code and its layers."""
    layers = {name: tree_size(out / name) for name in LAYERS}
    code = code_size()
    return {f: code + sum(layers[n] for n in FUNCTION_LAYERS[f]) for f in FUNCTIONS}


def check_sizes(sizes: dict[str, int], *, limit: int = LIMIT_BYTES) -> list[str]:
    """The problems: every function over ``limit``, named."""
    mb = 1024 * 1024
    return [
        f"serverless.yml: function {f} with its layers is {size / mb:.1f} MB unzipped, "
        f"over Lambda's {limit / mb:.0f} MB limit"
        for f, size in sizes.items()
        if size > limit
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.layers", description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "layers")
    parser.add_argument("--no-build", action="store_true", help="only measure what is built")
    args = parser.parse_args(argv)
    if not args.no_build:
        build(args.out)
        build_app(args.out)
    sizes = function_sizes(args.out)
    mb = 1024 * 1024
    print(f"{'function':<10} {'layers':<16} {'unzipped':>10}  (limit 250 MB, goal 150 MB)")
    for f, size in sizes.items():
        goal = "" if size <= GOAL_BYTES else "  over the goal"
        print(f"{f:<10} {'+'.join(FUNCTION_LAYERS[f]):<16} {size / mb:>7.1f} MB{goal}")
    problems = check_sizes(sizes)
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
