"""``make package``: build the layers, print every function's unzipped size, and package the
stack with the pinned Serverless CLI (``osls``) for one stage, fully offline.

osls asks CloudFormation for the last deployed layer hashes even when only packaging; a moto
server on loopback answers that no stack exists yet, with dummy credentials, so packaging
needs no AWS account and no network. ``osls deploy --package .serverless`` later uploads
exactly these artifacts.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
from pathlib import Path

from deploy import app, layers, params

ROOT = Path(__file__).resolve().parents[1]
SERVERLESS_YML = ROOT / "serverless.yml"
OUT = ROOT / ".serverless"
TEMPLATE = OUT / "cloudformation-template-update-stack.json"
NODE_BIN = ROOT / "node_modules" / ".bin"
"""The pinned Node.js tools (package-lock.json), run directly: through ``npx`` they would
start npm, which reads the user's npm configuration and warns about its keys."""


def node_tool(name: str) -> Path | None:
    """The installed ``name`` (``osls``, ``asl-validator``), or None before ``npm ci``."""
    path = NODE_BIN / name
    return path if path.is_file() else None


def osls_env(endpoint: str) -> dict[str, str]:
    """The environment osls packages in: dummy credentials, AWS calls to ``endpoint``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    return env | {
        "AWS_ACCESS_KEY_ID": "packaging-offline",
        "AWS_SECRET_ACCESS_KEY": "packaging-offline",
        "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
        "SLS_TELEMETRY_DISABLED": "1",
        "SLS_NOTIFICATIONS_MODE": "off",
    }


def run_osls(stage: str) -> None:
    from moto.server import ThreadedMotoServer

    osls = node_tool("osls")
    if osls is None:
        raise SystemExit(f"package: {NODE_BIN / 'osls'} not found: `make package` installs it")
    # The request log of this stand-in: osls asks for the deployed stack first and gets the
    # 400 "does not exist" that a first deployment gets too. Errors still show: werkzeug
    # logs them at ERROR, and osls fails the run.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        subprocess.run(
            [str(osls), "package", "--stage", stage],
            cwd=ROOT,
            env=osls_env(f"http://{host}:{port}"),
            check=True,
        )
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.package", description=__doc__)
    parser.add_argument("--stage", default="dev")
    args = parser.parse_args(argv)
    problems = params.check(SERVERLESS_YML, args.stage)
    if not problems:
        settings = app.main_settings()
        problems = app.check_stack_params(settings, params.stage(SERVERLESS_YML, args.stage))
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return 1
    code = layers.main([])
    if code:
        return code
    run_osls(args.stage)
    print(f"package: {TEMPLATE.relative_to(ROOT)} and the artifacts in .serverless/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
