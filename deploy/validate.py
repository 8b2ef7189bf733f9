"""``make validate`` (run by ``make test``): the stage parameters, the Step Functions
definitions (ours and ``asl-validator``), ``cfn-lint`` and ``checkov`` on the packaged
template and ``checkov`` on serverless.yml, a moto CloudFormation ``create_stack`` of the
template, and every function's size with its layers. Each
problem names its file; the exit status is 1 when there is any."""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import warnings
from pathlib import Path

from deploy import asl, layers, moto_stack, params
from deploy.package import NODE_BIN, OUT, ROOT, SERVERLESS_YML, TEMPLATE, node_tool

CFN_LINT_IGNORED = ("W3005",)
"""Redundant DependsOn in the code osls generates (allowed by the issue)."""


def check_asl() -> list[str]:
    found: list[str] = []
    validator = node_tool("asl-validator")
    for path in sorted((ROOT / "statemachine").glob("*.asl.json")):
        rel = path.relative_to(ROOT)
        found += asl.problems(rel)
        if validator is None:
            found.append(f"asl-validator: not in {NODE_BIN}: `make validate` installs it")
            continue
        out = _run([str(validator), "--json-path", str(rel)])
        if out.returncode != 0:
            found += [f"{rel}: asl-validator: {line.strip()}" for line in _lines(out)]
    return found


def check_cfn_lint(tools: Path) -> list[str]:
    out = _run([str(tools / "cfn-lint"), "--ignore-checks", *CFN_LINT_IGNORED, "--", str(TEMPLATE)])
    return [] if out.returncode == 0 else [f"cfn-lint: {line}" for line in _lines(out)]


def check_checkov(tools: Path) -> list[str]:
    found: list[str] = []
    for path, framework in ((TEMPLATE, "cloudformation"), (SERVERLESS_YML, "serverless")):
        out = _run(
            [str(tools / "checkov"), "-f", str(path), "--framework", framework]
            + ["-o", "json", "--quiet", "--skip-download"]
        )
        try:
            report = json.loads(out.stdout)
        except json.JSONDecodeError:
            found.append(f"{path.name}: checkov gave no report: {out.stderr.strip()[-500:]}")
            continue
        reports = report if isinstance(report, list) else [report]
        for item in reports:
            for failed in item.get("results", {}).get("failed_checks", []):
                found.append(
                    f"{path.relative_to(ROOT)}: checkov {failed['check_id']} "
                    f"{failed['resource']}: {failed['check_name']}"
                )
    return found


def check_moto_stack(stage: str) -> list[str]:
    """Create the packaged template on moto's CloudFormation (in-process, offline)."""
    import boto3
    from moto import mock_aws

    template = json.loads(TEMPLATE.read_text())
    logging.getLogger("moto").setLevel(logging.ERROR)  # it names each type it skips
    with warnings.catch_warnings(), mock_aws():
        warnings.simplefilter("ignore", UserWarning)
        session = boto3.session.Session(region_name="us-east-1")
        stack = moto_stack.create(session, template, OUT, f"agentworker-{stage}")
    created, skipped = stack.created.total(), stack.skipped.total()
    print(
        f"validate: moto CloudFormation: {stack.status}, {created} resources created, "
        f"{skipped} skipped (no moto model): "
        + ", ".join(f"{t} {n}" for t, n in sorted(stack.skipped.items()))
    )
    if stack.status != "CREATE_COMPLETE":
        return [f"{TEMPLATE.relative_to(ROOT)}: moto CloudFormation ended in {stack.status}"]
    return []


def _run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)


def _lines(out: subprocess.CompletedProcess[str]) -> list[str]:
    text = (out.stdout + out.stderr).strip()
    return [line for line in text.splitlines() if line.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.validate", description=__doc__)
    parser.add_argument("--stage", default="dev")
    parser.add_argument("--tools", type=Path, default=ROOT / ".tools" / "bin")
    args = parser.parse_args(argv)
    checks: list[tuple[str, list[str]]] = [
        ("stage parameters", params.check(SERVERLESS_YML, args.stage)),
        ("state machines", check_asl()),
    ]
    if TEMPLATE.is_file():
        checks += [
            ("cfn-lint", check_cfn_lint(args.tools)),
            ("checkov", check_checkov(args.tools)),
            ("moto CloudFormation", check_moto_stack(args.stage)),
        ]
    else:
        checks.append(("template", [f"{TEMPLATE}: missing: run `make package` first"]))
    sizes = layers.function_sizes(layers.ROOT / "build" / "layers")
    checks.append(("function sizes", layers.check_sizes(sizes)))
    failed = 0
    for name, problems in checks:
        print(f"validate: {name}: {'ok' if not problems else f'{len(problems)} problem(s)'}")
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
        failed += len(problems)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
