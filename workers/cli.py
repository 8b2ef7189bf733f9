"""The ``agentworker`` command."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workers.config import Settings, load_settings
from workers.errors import AgentWorkerError, ConfigError

if TYPE_CHECKING:
    from workers.adapters.aws.dead_letters import SqsDeadLetters
    from workers.prompts import MlflowPromptRegistry

DEFAULT_URL = "http://127.0.0.1:8765"


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        code: int = args.func(args)
        return code
    except ConfigError as exc:
        print(f"agentworker: {exc}", file=sys.stderr)
        return 2
    except AgentWorkerError as exc:
        print(f"agentworker: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="agentworker",
        description="Advance LLM agents one turn at a time: embedded server, CLI and tools.",
    )
    sub = p.add_subparsers(metavar="COMMAND")

    s = sub.add_parser("serve", help="run the local server, worker pool and web chat")
    s.add_argument("--host", help="bind address (default 127.0.0.1)")
    s.add_argument("--port", type=int, help="port (default 8765)")
    s.add_argument("--state-dir", type=Path, help="state directory (default ./.agentworker)")
    _app_arguments(s)
    s.add_argument("--workers", type=int, help="concurrent runs (default 4)")
    s.add_argument(
        "--rotate-token",
        action="store_true",
        help="a new development token (pages and CLIs holding the old one get 401)",
    )
    s.set_defaults(func=cmd_serve)

    s = sub.add_parser(
        "slack",
        help="serve as `serve` does, with the Slack app's events over Socket Mode (no public URL)",
    )
    s.add_argument(
        "--socket-mode",
        action="store_true",
        required=True,
        help="connect with the app-level token (AGENTWORKER_SLACK_APP_TOKEN, xapp-...)",
    )
    s.add_argument("--host", help="bind address (default 127.0.0.1)")
    s.add_argument("--port", type=int, help="port (default 8765)")
    s.add_argument("--state-dir", type=Path, help="state directory (default ./.agentworker)")
    _app_arguments(s)
    s.add_argument("--workers", type=int, help="concurrent runs (default 4)")
    s.set_defaults(func=cmd_slack, rotate_token=False)

    s = sub.add_parser("send", help="send a message to a running server and print the reply")
    s.add_argument("text", nargs="?", default="", help="message text")
    s.add_argument("-c", "--conversation", required=True, help="conversation id")
    s.add_argument("--url", default=os.environ.get("AGENTWORKER_URL", DEFAULT_URL))
    s.add_argument("--dedupe-key", help="source message id (repeats are dropped)")
    s.add_argument("--policy", choices=["enqueue", "merge", "interrupt", "reject"])
    s.add_argument("--approve", action="store_true", help="approve the pending tool call")
    s.add_argument("--deny", action="store_true", help="deny the pending tool call")
    s.add_argument(
        "--resume", metavar="JSON", help="answer the pending interrupt() with this JSON value"
    )
    s.add_argument("--reason", default="", help="reason for --approve/--deny")
    s.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the reply")
    s.add_argument("--no-wait", action="store_true", help="print the message id and return")
    s.add_argument(
        "--target",
        choices=["local", "sandbox"],
        default="local",
        help="'local' (default): the server at --url; 'sandbox': the AWS sandbox's queues",
    )
    s.add_argument("--state-dir", type=Path, help="where the sandbox's sandbox.json is")
    s.set_defaults(func=cmd_send)

    s = sub.add_parser("sandbox", help="run the AWS runtime on moto on this machine")
    s.add_argument("--port", type=int, default=0, help="moto server port (default: a free one)")
    s.add_argument("--state-dir", type=Path, help="where sandbox.json goes (./.agentworker)")
    s.add_argument(
        "--bedrock-stub", action="store_true", help="serve the model via a local Bedrock stub"
    )
    _app_arguments(s)
    s.set_defaults(func=cmd_sandbox)

    s = sub.add_parser("history", help="print a conversation's messages and replies")
    s.add_argument("-c", "--conversation", required=True)
    s.add_argument("--url", default=os.environ.get("AGENTWORKER_URL", DEFAULT_URL))
    s.add_argument("--json", action="store_true", help="raw JSON")
    s.set_defaults(func=cmd_history)

    s = sub.add_parser("rate", help="thumbs up or down on a reply (default: the last one)")
    s.add_argument("-c", "--conversation", required=True)
    vote = s.add_mutually_exclusive_group(required=True)
    vote.add_argument("--up", dest="score", action="store_const", const=1, help="a good reply")
    vote.add_argument("--down", dest="score", action="store_const", const=-1, help="a bad one")
    s.add_argument("--reply", help="the reply's id (default: the conversation's last reply)")
    s.add_argument("-m", "--comment", help="what was wrong (or right)")
    s.add_argument("--url", default=os.environ.get("AGENTWORKER_URL", DEFAULT_URL))
    s.set_defaults(func=cmd_rate)

    s = sub.add_parser("forget", help="erase a conversation: its state, stored objects and traces")
    s.add_argument("-c", "--conversation", required=True)
    s.add_argument(
        "--memories",
        action="store_true",
        help="also erase the long-term memories (the store) of the conversation's owner,"
        " which their other conversations share",
    )
    s.add_argument("--url", default=os.environ.get("AGENTWORKER_URL", DEFAULT_URL))
    s.add_argument(
        "--target",
        choices=("local", "aws", "sandbox"),
        default="local",
        help="'local' (default): the server at --url; 'aws': the stack the AGENTWORKER_*"
        " settings name (table, bucket, tracking URI); 'sandbox': the running sandbox",
    )
    s.add_argument("--state-dir", type=Path, help="where the sandbox's sandbox.json is")
    s.set_defaults(func=cmd_forget)

    s = sub.add_parser("dlq", help="list or redrive dead letters: messages that failed for good")
    s.set_defaults(func=lambda _args, dlq=s: _usage(dlq))
    actions = s.add_subparsers(metavar="ACTION")
    listing = actions.add_parser("list", help="list the dead letters (they stay where they are)")
    redrive = actions.add_parser("redrive", help="accept dead letters again, or send them back")
    for a in (listing, redrive):
        a.add_argument(
            "--target",
            choices=("local", "aws", "sandbox"),
            default="local",
            help="'local' (default): the messages whose turn failed for good in --state-dir;"
            " 'aws': the inbound queue's dead-letter queue (AGENTWORKER_QUEUE_URL, else the"
            " stack named by AGENTWORKER_TABLE_NAME); 'sandbox': the running sandbox's",
        )
        a.add_argument("--state-dir", type=Path, help="state directory (default ./.agentworker)")
        a.add_argument("-c", "--conversation", help="only this conversation's")
        a.add_argument(
            "--webhooks",
            action="store_true",
            help="the webhook deliveries that failed for good (local: <state-dir>/webhooks.db;"
            " aws, sandbox: the webhooks' dead-letter queue)",
        )
    which = redrive.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--id", dest="ids", action="append", metavar="ID", help="this message (repeatable)"
    )
    which.add_argument("--all", action="store_true", help="every dead letter (of -c)")
    redrive.add_argument(
        "--force", action="store_true", help="send back a body that does not parse too (SQS)"
    )
    listing.set_defaults(func=cmd_dlq_list)
    redrive.set_defaults(func=cmd_dlq_redrive)

    s = sub.add_parser("demo", help="scripted run: two conversations, a tool, an approval")
    s.add_argument("--state-dir", type=Path, help="default: a new temporary directory")
    s.add_argument("--no-tracing", action="store_true", help="skip MLflow traces")
    _app_arguments(s, model=False)
    s.set_defaults(func=cmd_demo)

    s = sub.add_parser("new", help="write a runnable app: graph, agentworker.toml, a test")
    s.add_argument("name", help="the app's name (a Python package name)")
    s.add_argument("--dir", type=Path, default=Path(), help="where to create it (default .)")
    s.set_defaults(func=cmd_new)

    s = sub.add_parser("state", help="print a conversation's graph state (its channels)")
    s.add_argument("-c", "--conversation", required=True)
    s.add_argument("--url", default=os.environ.get("AGENTWORKER_URL", DEFAULT_URL))
    s.set_defaults(func=cmd_state)

    s = sub.add_parser("traces", help="list the MLflow traces of a conversation")
    s.add_argument("-c", "--conversation", required=True)
    s.add_argument("--state-dir", type=Path)
    s.add_argument("--limit", type=int, default=50)
    s.set_defaults(func=cmd_traces)

    s = sub.add_parser(
        "stats", help="turns, latency, tokens, cache hits, cost and throttles from the traces"
    )
    s.add_argument("--since", default="1d", help="30m, 12h, 1d, 2w or an ISO date (default: 1d)")
    s.add_argument("-c", "--conversation", help="only this conversation")
    s.add_argument(
        "--include-evals", action="store_true", help="count the turns of 'agentworker eval' too"
    )
    s.add_argument("--state-dir", type=Path)
    s.set_defaults(func=cmd_stats)
    _prompt_parser(sub)

    s = sub.add_parser(
        "eval", help="run golden datasets through the app, score them, gate a release"
    )
    s.add_argument("datasets", nargs="*", type=Path, metavar="DATASET", help="evals/*.jsonl")
    _app_arguments(s)
    s.add_argument("--state-dir", type=Path, help="whose MLflow store (default ./.agentworker)")
    s.add_argument("--thresholds", type=Path, help="default: evals/thresholds.toml if present")
    s.add_argument("--judge", metavar="MODEL", help="LLM judge '<provider>:<model>'")
    s.add_argument("--concurrency", type=int, default=4, help="cases at a time (default 4)")
    s.add_argument("--compare", nargs=2, metavar=("RUN_A", "RUN_B"), help="metric deltas")
    s.add_argument("--from-feedback", type=Path, metavar="OUT.jsonl", help="draft cases")
    s.add_argument("--since", help="with --from-feedback: 7d, 24h, 30m or an ISO date")
    s.set_defaults(func=cmd_eval)

    s = sub.add_parser("schema", help="print the JSON Schema of the event models")
    s.add_argument("name", nargs="?", help="one model (default: all)")
    s.set_defaults(func=cmd_schema)

    s = sub.add_parser("stub", help="run a local model stub (no key, no network) until Ctrl-C")
    s.add_argument("kind", choices=["openai"], help="'openai': an OpenAI-compatible server")
    s.add_argument("--port", type=int, default=8800, help="port (default 8800; 0: a free one)")
    s.set_defaults(func=cmd_stub)

    s = sub.add_parser("schedule", help="post a message into a conversation later, or on a cron")
    s.set_defaults(func=lambda _args, schedule=s: _usage(schedule))
    actions = s.add_subparsers(metavar="ACTION")
    add = actions.add_parser("add", help="schedule a message: --in, --at or --cron")
    add.add_argument("text", help="the message to post then")
    when = add.add_mutually_exclusive_group(required=True)
    when.add_argument("--in", dest="in_", metavar="WHEN", help="from now: 2h, 30m, 1d, PT2H")
    when.add_argument("--at", help="an ISO 8601 time (2026-12-07T09:00, read in --tz)")
    when.add_argument("--cron", help="five fields: minute hour day month weekday ('0 9 * * 1-5')")
    add.add_argument("--tz", default="UTC", help="the time zone of --at and --cron (default UTC)")
    add.add_argument("--dedupe-key", help="run again with the same key: no second schedule")
    listing = actions.add_parser("list", help="the conversation's schedules, the next first")
    delete = actions.add_parser("delete", help="delete one of the conversation's schedules")
    delete.add_argument("schedule_id")
    for action in (add, listing, delete):
        action.add_argument("-c", "--conversation", required=True)
        action.add_argument("--url", default=os.environ.get("AGENTWORKER_URL", DEFAULT_URL))
        action.add_argument("--json", action="store_true", help="raw JSON")
    add.set_defaults(func=cmd_schedule_add)
    listing.set_defaults(func=cmd_schedule_list)
    delete.set_defaults(func=cmd_schedule_delete)

    s = sub.add_parser("tickets", help="import a helpdesk's tickets: one conversation each")
    s.set_defaults(func=lambda _args, tickets=s: _usage(tickets))
    actions = s.add_subparsers(metavar="ACTION")
    imports = actions.add_parser(
        "import", help="answer the tickets of a JSON Lines or CSV file (again: goes on)"
    )
    imports.add_argument("file", type=Path, help="a helpdesk export: .jsonl, or .csv")
    imports.add_argument(
        "--concurrency", type=int, default=4, help="tickets in flight at once (default 4)"
    )
    imports.add_argument("--url", default=os.environ.get("AGENTWORKER_URL", DEFAULT_URL))
    imports.add_argument(
        "--timeout", type=float, default=300.0, help="seconds to wait for one ticket's answer"
    )
    imports.add_argument("--json", action="store_true", help="the summary as JSON")
    imports.add_argument("--config", type=Path, help="app file (default: ./agentworker.toml)")
    imports.add_argument(
        "--target",
        choices=("local", "aws", "sandbox"),
        default="local",
        help="'local' (default): the server at --url, each ticket's outcome awaited; 'aws':"
        " the inbound queue of the stack the AGENTWORKER_* settings name (SendMessageBatch);"
        " 'sandbox': the running sandbox's",
    )
    imports.add_argument("--state-dir", type=Path, help="where the sandbox's sandbox.json is")
    imports.set_defaults(func=cmd_tickets_import)

    s = sub.add_parser(
        "stack-spec", help="print the deployable stack's spec (serverless.yml reads it)"
    )
    s.add_argument("--out", type=Path, help="write to this file (deploy/stack.json)")
    s.set_defaults(func=cmd_stack_spec)
    return p


def _app_arguments(p: argparse.ArgumentParser, *, model: bool = True) -> None:
    """The app's settings on the command line (over the variables and agentworker.toml)."""
    p.add_argument(
        "--graph",
        help="the app's graph, package.module:attribute (default: the bundled support example)",
    )
    p.add_argument("--config", type=Path, help="app file (default: ./agentworker.toml)")
    if model:
        p.add_argument("--model", help="'offline' (default) or '<provider>:<model>'")


APP_FLAGS = {"graph": "graph", "config": "config", "model": "model"}


def _settings(args: argparse.Namespace, **keys: str) -> Settings:
    overrides: dict[str, Any] = {}
    for attr, setting in keys.items():
        value = getattr(args, attr, None)
        if value is not None:
            overrides[setting] = value
    return load_settings(**overrides)


# serve ------------------------------------------------------------------------------------


def cmd_slack(args: argparse.Namespace) -> int:
    """``serve``, with the Slack app's events and clicks over Socket Mode as well."""
    return cmd_serve(args, slack_socket_mode=True)


def cmd_serve(args: argparse.Namespace, *, slack_socket_mode: bool = False) -> int:
    settings = _settings(
        args, host="host", port="port", state_dir="state_dir", workers="workers", **APP_FLAGS
    )
    import uvicorn

    from workers.adapters.local.guard import check_bind, listen, with_dev_token
    from workers.adapters.local.server import create_app
    from workers.bootstrap import prepare_embedded
    from workers.observability import configure_logging, quiet_socket_lines

    check_bind(settings)
    if slack_socket_mode:
        check_slack_socket_mode(settings)
    configure_logging(settings.log_level)
    # The port first: a taken one stops here, before anything is printed or written.
    sock = listen(settings)
    with sock:
        # The model and the graph are built now: a bad one stops here, before "serving".
        runtime = prepare_embedded(settings)
        settings = with_dev_token(settings, rotate=args.rotate_token)
        app = create_app(
            settings, runtime_factory=lambda _: runtime(), slack_socket_mode=slack_socket_mode
        )
        base = f"http://{settings.host}:{settings.port}/"
        print(
            f"agentworker: serving on {base} (model {settings.model}, state {settings.state_dir})",
            flush=True,
        )
        if settings.dev_token is not None:
            # Jupyter's way: the page takes the token from the URL's fragment, which browsers
            # never send to a server; the CLI reads it from the state directory. It stays the
            # same across restarts (--rotate-token makes a new one).
            print(
                f"agentworker: open {base}#token={settings.dev_token.get_secret_value()}",
                flush=True,
            )
        else:
            print("agentworker: callers authenticate with JWT bearer tokens", flush=True)
        config = uvicorn.Config(
            app, log_level=settings.log_level.lower(), ws_max_size=2 * 1024 * 1024
        )
        quiet_socket_lines()
        uvicorn.Server(config).run(sockets=[sock])
    return 0


def check_slack_socket_mode(settings: Settings) -> None:
    """``ConfigError`` unless the app-level and bot tokens are there (Socket Mode connects
    with the one, replies are posted with the other)."""
    app, bot = settings.slack_app_token, settings.slack_bot_token
    if app is None or not app.get_secret_value().startswith("xapp-"):
        raise ConfigError(
            "AGENTWORKER_SLACK_APP_TOKEN: Socket Mode needs the app's app-level token (xapp-...,"
            " scope connections:write: Basic Information > App-Level Tokens)"
        )
    if bot is None:
        raise ConfigError(
            "AGENTWORKER_SLACK_BOT_TOKEN: replies are posted with the bot token (xoxb-...)"
        )


# send / history ---------------------------------------------------------------------------


def _http(url: str) -> Any:
    """A client of the server at ``url`` with a token: ``AGENTWORKER_TOKEN``, else the
    development token of a server on ``AGENTWORKER_STATE_DIR`` (default ``.agentworker``)."""
    import httpx

    from workers.adapters.local.guard import read_dev_token

    token = os.environ.get("AGENTWORKER_TOKEN") or read_dev_token(_state_dir_of_cli())
    headers = {"authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=url, timeout=30.0, headers=headers)


def _fail(resp: Any) -> int:
    try:
        err = resp.json()["error"]
        print(f"agentworker: {resp.status_code} {err['code']}: {err['message']}", file=sys.stderr)
    except (ValueError, KeyError):
        print(f"agentworker: HTTP {resp.status_code}: {resp.text[:500]}", file=sys.stderr)
    if resp.status_code == 401 and not os.environ.get("AGENTWORKER_TOKEN"):
        from workers.adapters.local.guard import DEV_TOKEN_FILE

        where = _state_dir_of_cli() / DEV_TOKEN_FILE
        print(
            f"agentworker: the token in {where} is not this server's: run the command from the"
            " folder where 'agentworker serve' runs, or set AGENTWORKER_STATE_DIR to its state"
            " directory (or AGENTWORKER_TOKEN to a token)",
            file=sys.stderr,
        )
    return 1


def _state_dir_of_cli() -> Path:
    return Path(os.environ.get("AGENTWORKER_STATE_DIR", ".agentworker"))


def cmd_send(args: argparse.Namespace) -> int:
    if sum((bool(args.approve), bool(args.deny), args.resume is not None)) > 1:
        print("agentworker: give one of --approve, --deny, --resume", file=sys.stderr)
        return 2
    if args.resume is not None:
        try:
            args.resume_value = json.loads(args.resume)
        except json.JSONDecodeError as exc:
            print(f"agentworker: --resume: not JSON: {exc}", file=sys.stderr)
            return 2
    deciding = args.approve or args.deny or args.resume is not None
    if not deciding and not args.text:
        print("agentworker: give the message text", file=sys.stderr)
        return 2
    if args.target == "sandbox":
        return _send_to_sandbox(args)
    import httpx

    cid = args.conversation
    try:
        with _http(args.url) as client:
            pending = None
            if deciding:
                view = client.get(f"/v1/conversations/{cid}")
                if view.status_code != 200:
                    return _fail(view)
                pending = view.json()["pending_approval"]
                if pending is None:
                    return _nothing_to_decide()
            resp = client.post(f"/v1/conversations/{cid}/messages", json=_message(args, pending))
            if resp.status_code != 202:
                return _fail(resp)
            accepted = resp.json()
            if args.no_wait:
                print(accepted["message_id"])
                return 0
            return _wait_for_answer(client, cid, accepted["message_id"], args.timeout)
    except httpx.ConnectError:
        print(
            f"agentworker: no server at {args.url}; start one with 'agentworker serve'",
            file=sys.stderr,
        )
        return 1


def _message(args: argparse.Namespace, pending: dict[str, Any] | None) -> dict[str, Any]:
    """The message request ``send`` makes; ``pending`` is the approval request that
    ``--approve``/``--deny`` answer."""
    body: dict[str, Any] = {}
    if pending is not None and args.resume is not None:
        body["resume"] = {"interrupt_id": pending["interrupt_id"], "value": args.resume_value}
        body["dedupe_key"] = f"decision:{pending['interrupt_id']}"
    elif pending is not None:
        body["approval"] = {
            "interrupt_id": pending["interrupt_id"],
            "approved": bool(args.approve),
            "reason": args.reason,
        }
        body["dedupe_key"] = f"decision:{pending['interrupt_id']}"
    else:
        body["text"] = args.text
        if args.dedupe_key:
            body["dedupe_key"] = args.dedupe_key
    if args.policy:
        body["policy"] = args.policy
    return body


def _nothing_to_decide() -> int:
    print("agentworker: nothing is waiting for an approval or an answer", file=sys.stderr)
    return 1


def _send_to_sandbox(args: argparse.Namespace) -> int:
    from workers.errors import SandboxNotRunning
    from workers.sandbox.server import SandboxClient, build_message, read_state

    settings = _settings(args, state_dir="state_dir")
    try:
        client = SandboxClient(read_state(settings.state_dir))
        pending = None
        if args.approve or args.deny or args.resume is not None:
            request = client.pending_approval(args.conversation)
            if request is None:
                return _nothing_to_decide()
            pending = request.model_dump(mode="json")
        message = build_message(args.conversation, _message(args, pending))
        if args.no_wait:
            client.send(message)
            print(message.message_id)
            return 0
        payload = client.ask(message, args.timeout)
    except SandboxNotRunning as exc:
        print(f"agentworker: {exc}", file=sys.stderr)
        return 1
    if payload is None:
        return _no_reply(args.timeout)
    return _answer(payload)


def _wait_for_answer(client: Any, cid: str, message_id: str, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        view = client.get(f"/v1/conversations/{cid}").json()
        for entry in view["replies"]:
            if message_id in entry["payload"].get("in_reply_to", []):
                return _answer(entry["payload"])
        time.sleep(0.1)
    return _no_reply(timeout)


def _answer(payload: dict[str, Any]) -> int:
    """Print the answer: an error notice (the turn failed, the model was down) on stderr,
    exit code 1; anything else on stdout, 0."""
    if payload["type"] == "notice" and payload.get("level") == "error":
        print(f"agentworker: {_render(payload)}", file=sys.stderr)
        return 1
    print(_render(payload))
    return 0


def _no_reply(timeout: float) -> int:
    print(f"agentworker: no reply within {timeout:.0f}s", file=sys.stderr)
    return 1


def _render(payload: dict[str, Any]) -> str:
    kind = payload["type"]
    if kind == "approval_request":
        args = json.dumps(payload["args"])
        return f"[approval needed] {payload['text']} (tool {payload['tool']} {args})"
    if kind == "interrupt":
        return f"[answer needed] {payload['text']} (reply, or send --resume JSON)"
    if kind == "notice":
        return f"[{payload['level']}] {payload['text']}"
    return str(payload["text"])


def _get(url: str, path: str) -> Any:
    """``GET path`` of the server at ``url``: the JSON body, or the exit code of a failure
    (the reason printed)."""
    return _call(url, "GET", path)


def _call(url: str, method: str, path: str, *, body: Any = None, ok: int = 200) -> Any:
    """``method path`` of the server at ``url``: the JSON body, or the exit code of a failure
    (the reason printed)."""
    import httpx

    try:
        with _http(url) as client:
            resp = client.request(method, path, json=body)
    except httpx.ConnectError:
        print(f"agentworker: no server at {url}", file=sys.stderr)
        return 1
    if resp.status_code != ok:
        return _fail(resp)
    return resp.json()


def cmd_schedule_add(args: argparse.Namespace) -> int:
    from events.schedules import parse_when

    body: dict[str, Any] = {"text": args.text, "timezone": args.tz}
    if args.dedupe_key:
        body["dedupe_key"] = args.dedupe_key
    if args.in_ is not None:
        try:
            body["in_seconds"] = parse_when(args.in_, now=0.0)
        except ValueError as exc:
            print(f"agentworker: --in: {exc}", file=sys.stderr)
            return 2
    elif args.at is not None:
        body["at"] = args.at
    else:
        body["cron"] = args.cron
    path = f"/v1/conversations/{args.conversation}/schedules"
    view = _call(args.url, "POST", path, body=body, ok=201)
    if isinstance(view, int):
        return view
    print(json.dumps(view, indent=2) if args.json else _schedule_line(view))
    return 0


def cmd_schedule_list(args: argparse.Namespace) -> int:
    view = _get(args.url, f"/v1/conversations/{args.conversation}/schedules")
    if isinstance(view, int):
        return view
    if args.json:
        print(json.dumps(view, indent=2))
    elif not view["schedules"]:
        print(f"{args.conversation} has no schedules")
    for schedule in [] if args.json else view["schedules"]:
        print(_schedule_line(schedule))
    return 0


def cmd_schedule_delete(args: argparse.Namespace) -> int:
    path = f"/v1/conversations/{args.conversation}/schedules/{args.schedule_id}"
    view = _call(args.url, "DELETE", path)
    if isinstance(view, int):
        return view
    print(json.dumps(view, indent=2) if args.json else f"deleted {args.schedule_id}")
    return 0


def _schedule_line(view: dict[str, Any]) -> str:
    """``sch_...  next 2026-12-07T08:00:00+00:00  cron '0 9 * * 1-5' Europe/Paris  text``."""
    when = f"cron {view['cron']!r} {view['timezone']}" if view["cron"] else "once"
    nxt = view["next_fire_at"] or "-"
    by = "" if view["source"] == "api" else f"  (by the {view['source']})"
    return f"{view['schedule_id']}  next {nxt}  {when}  {view['text'][:80]}{by}"


def cmd_history(args: argparse.Namespace) -> int:
    view = _get(args.url, f"/v1/conversations/{args.conversation}")
    if isinstance(view, int):
        return view
    if args.json:
        print(json.dumps(view, indent=2))
        return 0
    print(
        f"conversation {view['conversation_id']}  status {view['status']}  policy {view['policy']}"
    )
    events: list[tuple[str, str, str]] = []
    for m in view["messages"]:
        text = m["text"]
        if m["kind"] == "approval":
            text = "approved" if m["approved"] else "denied"
        elif m["kind"] == "resume":
            text = f"answered {json.dumps(m['value'])}"
        status = f"{m['status']}: {m['error']}" if m.get("error") else m["status"]
        events.append((m["received_at"], f"> {m['sender']}", f"{text}  [{status}]"))
    for r in view["replies"]:
        events.append((r["payload"]["created_at"], "< agent", _render(r["payload"])))
    for _, who, text in sorted(events, key=lambda e: e[0]):
        print(f"{who:>12}  {text}")
    return 0


def cmd_rate(args: argparse.Namespace) -> int:
    """``POST .../feedback`` on a reply: the one named, else the conversation's last reply
    that came from a turn (a notice cannot be rated)."""
    cid = args.conversation
    reply_id = args.reply
    if reply_id is None:
        view = _get(args.url, f"/v1/conversations/{cid}")
        if isinstance(view, int):
            return view
        rated = [r["payload"] for r in view["replies"] if r["payload"].get("turn_id")]
        if not rated:
            print(f"agentworker: {cid} has no reply to rate yet", file=sys.stderr)
            return 1
        reply_id = rated[-1]["reply_id"]
    body: dict[str, Any] = {"reply_id": reply_id, "score": args.score}
    if args.comment:
        body["comment"] = args.comment
    import httpx

    try:
        with _http(args.url) as client:
            resp = client.post(f"/v1/conversations/{cid}/feedback", json=body)
    except httpx.ConnectError:
        print(f"agentworker: no server at {args.url}", file=sys.stderr)
        return 1
    if resp.status_code != 202:
        return _fail(resp)
    print(f"rated {reply_id} {'+1' if args.score > 0 else '-1'}")
    return 0


def cmd_forget(args: argparse.Namespace) -> int:
    cid = args.conversation
    if args.target == "local":
        import httpx

        try:
            with _http(args.url) as client:
                params = {"memories": "true"} if args.memories else {}
                resp = client.delete(f"/v1/conversations/{cid}", params=params)
        except httpx.ConnectError:
            print(f"agentworker: no server at {args.url}", file=sys.stderr)
            return 1
        if resp.status_code != 200:
            return _fail(resp)
        removed: dict[str, int] = resp.json()["removed"]
        pending: list[str] = resp.json().get("pending", [])
    else:
        from events.identity import backend
        from workers import bootstrap
        from workers.core.steps import forget_conversation
        from workers.errors import AgentWorkerError, NotFound

        try:
            if args.target == "sandbox":
                _point_at_sandbox(args)
            deps = bootstrap.aws_deps()
            try:
                erasure = forget_conversation(
                    deps, cid, backend("iam:agentworker-cli"), memories=args.memories
                )
                removed, pending = erasure.removed, list(erasure.pending)
            except NotFound:
                # Erased before, its traces left behind (the tracking server was down)?
                traces = deps.tracer.forget(cid)
                if traces == 0:
                    raise
                removed, pending = ({}, ["traces"]) if traces is None else ({"traces": traces}, [])
        except AgentWorkerError as exc:
            print(f"agentworker: {exc}", file=sys.stderr)
            return 1
    total = sum(removed.values())
    print(f"forgot {cid}: " + ", ".join(f"{n} {kind}" for kind, n in sorted(removed.items())))
    print(f"{total} items removed")
    if "traces" not in pending:
        return 0
    if args.target == "local":
        print("traces: pending (the server's exporter deletes them once the store answers)")
        return 0
    print(
        "agentworker: the traces are not deleted, the tracking server is unreachable: run"
        f" `agentworker forget -c {cid} --target {args.target}` again once it answers",
        file=sys.stderr,
    )
    return 3


def _point_at_sandbox(args: argparse.Namespace) -> None:
    """Make this process's AWS settings the running sandbox's (its endpoint and names)."""
    from workers.sandbox.server import read_state

    state = read_state(_settings(args, state_dir="state_dir").state_dir)
    os.environ.update(
        {
            "AWS_ENDPOINT_URL": state.endpoint_url,
            "AWS_DEFAULT_REGION": state.region,
            "AWS_ACCESS_KEY_ID": os.environ.get("AWS_ACCESS_KEY_ID", "testing"),
            "AWS_SECRET_ACCESS_KEY": os.environ.get("AWS_SECRET_ACCESS_KEY", "testing"),
            "AGENTWORKER_TABLE_NAME": state.table_name,
            "AGENTWORKER_BUCKET_NAME": state.bucket_name,
            "AGENTWORKER_STATE_MACHINE_ARN": state.state_machine_arn,
            "AGENTWORKER_REPLY_TOPIC_ARN": state.topic_arn,
        }
    )


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


# dlq --------------------------------------------------------------------------------------


def cmd_dlq_list(args: argparse.Namespace) -> int:
    from workers.tables import age, preview, text_table

    now = time.time()
    if args.webhooks and args.target == "local":
        return _dead_webhooks(args, now)
    if args.target == "local":
        from workers.adapters.local.dead_letters import opened

        settings = _settings(args, state_dir="state_dir")
        with opened(settings) as local:
            failed = local.failed(conversation_id=args.conversation)
        if not failed:
            print(f"no failed messages in {settings.db_path}")
            return 0
        header = ["conversation", "message_id", "age", "text", "error"]
        rows = [
            [
                f.conversation_id,
                f.message_id,
                age(now - f.received_at.timestamp()),
                preview(f.message.text or f"[{f.message.kind}]"),
                preview(f.error, 60),
            ]
            for f in failed
        ]
        print(text_table(header, rows))
        print(f"{len(failed)} failed message(s); agentworker dlq redrive --id ID (or --all)")
        return 0
    dead = _sqs_dead_letters(args)
    peek = dead.peek(conversation_id=args.conversation)
    if not peek.letters:
        print(f"no dead letters in {dead.dlq_url}")
        return 0
    what = "delivery" if args.webhooks else "text"
    header = ["message_id", "conversation", "receives", "age", what, "error"]
    rows = [
        [
            d.message_id,
            d.conversation_id or "-",
            str(d.receive_count),
            age(now - d.sent_at.timestamp()),
            preview(d.shown),
            preview(d.error, 60),
        ]
        for d in peek.letters
    ]
    print(text_table(header, rows))
    print(f"{len(peek.letters)} dead letter(s) in {dead.dlq_url}")
    if peek.total > len(peek.letters) and args.conversation is None:
        print(
            f"about {peek.total} in the queue: a FIFO message group shows ten at a time;"
            " redrive those, then look again"
        )
    return 0


def cmd_dlq_redrive(args: argparse.Namespace) -> int:
    from workers.errors import BadInput, NotFound

    if args.webhooks and args.target == "local":
        return _redrive_webhooks(args)
    try:
        if args.target == "local":
            return _redrive_local(args)
        return _redrive_sqs(args)
    except (NotFound, BadInput) as exc:
        print(f"agentworker: {exc}", file=sys.stderr)
        return 2


def _webhook_queue(args: argparse.Namespace) -> Any:
    """The local webhook queue of the state directory (``None`` when there is none)."""
    from workers.adapters.local.webhooks import WEBHOOKS_DB, WebhookQueue

    path = _settings(args, state_dir="state_dir").state_dir / WEBHOOKS_DB
    if not path.exists():
        print(f"no webhook deliveries in {path}")
        return None
    return WebhookQueue(path)


def _dead_webhooks(args: argparse.Namespace, now: float) -> int:
    """``dlq list --webhooks``: the deliveries that failed for good."""
    from workers.tables import age, preview, text_table

    queue = _webhook_queue(args)
    if queue is None:
        return 0
    try:
        dead = queue.dead(args.conversation)
        held = queue.held(args.conversation)
    finally:
        queue.close()
    if not dead:
        print(f"no dead webhook deliveries in {queue.path}")
        return 0
    header = ["id", "webhook", "conversation", "event", "attempts", "age", "error"]
    rows = [
        [
            str(d.id),
            d.subscription,
            d.conversation_id,
            d.event,
            str(d.attempts),
            age(now - d.created_at),
            preview(d.last_error or "", 60),
        ]
        for d in dead
    ]
    print(text_table(header, rows))
    print(f"{len(dead)} dead webhook deliveries; agentworker dlq redrive --webhooks --id ID")
    if held:
        print(f"{held} more held behind them (sent, in order, once those are redriven)")
    return 0


def _redrive_webhooks(args: argparse.Namespace) -> int:
    """``dlq redrive --webhooks``: dead deliveries queued again (the server sends them)."""
    queue = _webhook_queue(args)
    if queue is None:
        return 0
    try:
        ids = None if args.all else [int(i) for i in args.ids if i.isdigit()]
        if ids is not None and len(ids) != len(args.ids):
            print("agentworker: --id: a webhook delivery's id is a number", file=sys.stderr)
            return 2
        missing = sorted(set(ids or []) - {d.id for d in queue.dead(args.conversation)})
        if missing:  # nothing moves
            print(f"agentworker: no dead webhook delivery {missing}", file=sys.stderr)
            return 2
        done = queue.redrive(ids, args.conversation)
    finally:
        queue.close()
    print(f"{len(done)} webhook deliveries queued again")
    return 0


def _redrive_local(args: argparse.Namespace) -> int:
    from workers.adapters.local.dead_letters import opened

    settings = _settings(args, state_dir="state_dir")
    with opened(settings) as local:
        done = local.redrive(None if args.all else args.ids, conversation_id=args.conversation)
    if not done:
        print(f"no failed messages in {settings.db_path}")
        return 0
    refused = 0
    for r in done:
        what = f"{r.failed.message_id} ({r.failed.conversation_id})"
        if r.rejected:
            refused += 1
            print(f"refused {what}: the conversation's policy is 'reject' and a run is live")
        elif r.already:
            print(f"already redriven {what} as {r.message_id}")
        else:
            print(f"redriven {what} as {r.message_id}")
    print(
        f"{len(done) - refused} redriven; the server on {settings.state_dir} answers them at"
        f" its next sweep (every {settings.sweep_interval_seconds:g}s), or when it starts"
    )
    return 1 if refused else 0


def _redrive_sqs(args: argparse.Namespace) -> int:
    dead = _sqs_dead_letters(args)
    ids = None if args.all else args.ids
    report = dead.redrive(ids, conversation_id=args.conversation, force=args.force)
    for moved in report.moved:
        letter = moved.letter
        print(
            f"moved {letter.message_id} ({letter.conversation_id or 'unparseable'}) to the"
            f" {'webhooks' if args.webhooks else 'inbound'} queue as {moved.sent_id}"
        )
    for left in report.not_moved:
        kind = "skipped" if left.skipped else "not moved"
        print(f"{kind} {left.letter.message_id}: {left.reason}")
    print(f"{len(report.moved)} moved, {len(report.not_moved)} not moved")
    return 1 if report.not_moved else 0


def _sqs_dead_letters(args: argparse.Namespace) -> SqsDeadLetters:
    """The dead letters of the inbound queue (``--webhooks``: the webhooks queue) of the
    stack (``aws``) or the sandbox."""
    from workers.adapters.aws.dead_letters import SqsDeadLetters

    settings = _settings(args, state_dir="state_dir")
    if not args.webhooks:
        sqs, queue_url = _inbound_queue(args.target, settings)
        return SqsDeadLetters.of_queue(sqs, queue_url)
    from workers.adapters.aws.dead_letters import webhooks_queue_url

    if args.target == "sandbox":
        from workers.sandbox.server import client_factory, read_state

        state = read_state(settings.state_dir)
        sqs = client_factory(state.endpoint_url, state.region)("sqs")
        queue_url = state.webhooks_queue_url
    else:
        import boto3

        sqs = boto3.session.Session().client("sqs")
        queue_url = webhooks_queue_url(sqs, settings)
    return SqsDeadLetters.of_queue(sqs, queue_url, webhooks=True)


def _inbound_queue(target: str, settings: Settings) -> tuple[Any, str]:
    """An SQS client and the inbound queue's URL of the sandbox, or of the stack (``aws``)."""
    from workers.adapters.aws.dead_letters import inbound_queue_url

    if target == "sandbox":
        from workers.sandbox.server import client_factory, read_state

        state = read_state(settings.state_dir)
        return client_factory(state.endpoint_url, state.region)("sqs"), state.queue_url
    import boto3

    sqs = boto3.session.Session().client("sqs")
    return sqs, inbound_queue_url(sqs, settings)


def cmd_new(args: argparse.Namespace) -> int:
    from workers.scaffold import write_app

    root = write_app(args.name, args.dir)
    print(f"agentworker: wrote {root}/ (agentworker.toml, {args.name}/graph.py, tests/)")
    print(f"  cd {root} && agentworker serve       # then open the printed address")
    print(f"  cd {root} && python -m pytest        # its test drives real turns")
    return 0


def cmd_state(args: argparse.Namespace) -> int:
    state = _get(args.url, f"/v1/conversations/{args.conversation}/state")
    if isinstance(state, int):
        return state
    print(json.dumps(state, indent=2))
    return 0


# sandbox ----------------------------------------------------------------------------------


def cmd_sandbox(args: argparse.Namespace) -> int:
    settings = _settings(args, state_dir="state_dir", **APP_FLAGS)
    from workers.observability import configure_logging
    from workers.sandbox.server import SandboxOptions, serve_sandbox

    configure_logging(settings.log_level)
    options = SandboxOptions(
        state_dir=settings.state_dir, port=args.port, bedrock_stub=args.bedrock_stub
    )
    return serve_sandbox(settings, options, sys.stdout)


def cmd_stub(args: argparse.Namespace) -> int:
    from workers.sandbox.stub_command import serve_openai_stub

    try:
        return serve_openai_stub(args.port, sys.stdout)
    except OSError as exc:
        where = f"127.0.0.1:{args.port}"
        print(f"agentworker: cannot listen on {where}: {exc.strerror}", file=sys.stderr)
        return 2


# demo -------------------------------------------------------------------------------------


def _quiet_mlflow() -> None:
    """MLflow logs its database migrations at INFO; the CLI's own output is the point."""
    import logging

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")


def cmd_demo(args: argparse.Namespace) -> int:
    from workers.demo import run_demo

    _quiet_mlflow()
    settings = _settings(args, graph="graph", config="config")
    return asyncio.run(run_demo(args.state_dir, settings=settings, tracing=not args.no_tracing))


# traces -----------------------------------------------------------------------------------


def cmd_traces(args: argparse.Namespace) -> int:
    settings = _settings(args, state_dir="state_dir")
    from workers.observability import list_traces

    _quiet_mlflow()
    rows = list_traces(settings, args.conversation, limit=args.limit)
    if not rows:
        print(f"no traces for conversation {args.conversation!r} in {settings.shown_tracking_uri}")
        return 1
    from workers.tables import text_table

    header = ["trace_id", "start", "ms", "status", "tokens in/out", "run_id", "turn_id"]
    print(text_table(header, rows))
    return 0


# stats ------------------------------------------------------------------------------------


def cmd_stats(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from workers.errors import BadInput
    from workers.stats import Stats, parse_since, read_turns, render

    settings = _settings(args, state_dir="state_dir")
    try:
        since = parse_since(args.since, datetime.now(UTC))
    except BadInput as exc:
        print(f"agentworker: {exc}", file=sys.stderr)
        return 2
    _quiet_mlflow()
    turns = read_turns(
        settings.tracking_uri,
        settings.mlflow_experiment,
        since=since,
        conversation_id=args.conversation,
    )
    counted = [t for t in turns if args.include_evals or not t.from_eval]
    print(render(Stats(counted), since=since, evals_left_out=len(turns) - len(counted)))
    return 0


# prompt -----------------------------------------------------------------------------------


def _prompt_parser(sub: Any) -> None:
    s = sub.add_parser("prompt", help="list, push, promote and diff prompts in the MLflow registry")
    s.set_defaults(func=lambda _args, prompt=s: _usage(prompt))
    actions = s.add_subparsers(metavar="ACTION")
    listing = actions.add_parser("list", help="every prompt: versions, aliases, messages")
    push = actions.add_parser("push", help="a file's text as the prompt's new version")
    push.add_argument("file", nargs="?", type=Path, help="default: the app's prompt file")
    push.add_argument("--name", help="registry name (default: the app's prompt_name)")
    push.add_argument("-m", "--message", default="", help="what changed (commit message)")
    _app_arguments(push, model=False)
    promote = actions.add_parser("promote", help="point an alias at a version")
    promote.add_argument("name")
    promote.add_argument("version", help="a version number")
    promote.add_argument("--alias", required=True, help="e.g. production, staging")
    diff = actions.add_parser("diff", help="unified diff of two versions (numbers or aliases)")
    show = actions.add_parser("show", help="print one version's text (a number or an alias)")
    for a in (diff, show):
        a.add_argument("name")
    diff.add_argument("a")
    diff.add_argument("b")
    show.add_argument("ref")
    for a in (listing, push, promote, diff, show):
        a.add_argument("--state-dir", type=Path, help="state directory (default ./.agentworker)")
    listing.set_defaults(func=cmd_prompt_list)
    push.set_defaults(func=cmd_prompt_push)
    promote.set_defaults(func=cmd_prompt_promote)
    diff.set_defaults(func=cmd_prompt_diff)
    show.set_defaults(func=cmd_prompt_show)


def _prompt_registry(settings: Settings, *, create: bool = False) -> MlflowPromptRegistry | None:
    """The registry at ``settings``' tracking URI, ``None`` when it has no database yet
    (reading never creates one); ``ConfigError`` without full MLflow."""
    from workers.prompts import has_registry_client, open_registry

    if not has_registry_client():
        raise ConfigError("prompt: the prompt registry needs full mlflow (pip install mlflow)")
    _quiet_mlflow()
    return open_registry(settings, create=create)


def _registry_or_fail(settings: Settings, name: str) -> MlflowPromptRegistry:
    registry = _prompt_registry(settings)
    if registry is None:
        raise ConfigError(f"unknown prompt {name!r}: no prompts in {settings.shown_tracking_uri}")
    return registry


def cmd_prompt_list(args: argparse.Namespace) -> int:
    settings = _settings(args, state_dir="state_dir")
    registry = _prompt_registry(settings)
    names = [] if registry is None else registry.names()
    if registry is None or not names:
        print(f"no prompts in {settings.shown_tracking_uri}")
        return 0
    from workers.tables import preview, text_table

    rows = [
        [
            v.name,
            str(v.version),
            ",".join(v.aliases),
            time.strftime("%Y-%m-%d %H:%M", time.localtime(v.created_ms / 1000)),
            preview(v.message or v.text),
        ]
        for name in names
        for v in registry.versions(name)
    ]
    print(text_table(["name", "version", "aliases", "created", "message"], rows))
    return 0


def cmd_prompt_push(args: argparse.Namespace) -> int:
    settings = _settings(args, state_dir="state_dir", graph="graph", config="config")
    from workers.prompts import prompt_name, push_prompt

    path: Path | None = args.file or settings.prompt
    if path is None:
        raise ConfigError(
            "prompt push: no file given and the app sets no prompt file (the prompt setting)"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"prompt push: {path}: {exc}") from None
    name = args.name or prompt_name(settings)
    registry = _prompt_registry(settings, create=True)
    assert registry is not None  # created when missing
    version, created = push_prompt(registry, name, text, args.message)
    shown = path.resolve()
    shown = shown.relative_to(Path.cwd()) if shown.is_relative_to(Path.cwd()) else shown
    if created:
        print(f"{name}: version {version.version} (from {shown})")
    else:
        print(f"{name}: {shown} is the same as version {version.version}; nothing pushed")
    return 0


def cmd_prompt_promote(args: argparse.Namespace) -> int:
    settings = _settings(args, state_dir="state_dir")
    from workers.prompts import set_alias

    before = set_alias(_registry_or_fail(settings, args.name), args.name, args.version, args.alias)
    was = "" if before is None else f" (was version {before.version})"
    print(f"{args.name}@{args.alias}: version {args.version}{was}")
    return 0


def cmd_prompt_diff(args: argparse.Namespace) -> int:
    settings = _settings(args, state_dir="state_dir")
    from workers.prompts import diff_versions

    text = diff_versions(_registry_or_fail(settings, args.name), args.name, args.a, args.b)
    if text:
        print(text, end="")
    else:
        print(f"{args.name}: {args.a} and {args.b} have the same text")
    return 0


def cmd_prompt_show(args: argparse.Namespace) -> int:
    settings = _settings(args, state_dir="state_dir")
    from workers.prompts import find_version

    print(find_version(_registry_or_fail(settings, args.name), args.name, args.ref).text)
    return 0


# eval -------------------------------------------------------------------------------------


def cmd_eval(args: argparse.Namespace) -> int:
    from workers.evals import command

    _quiet_mlflow()
    settings = _settings(args, state_dir="state_dir", **APP_FLAGS)
    if args.compare:
        return command.compare(settings, *args.compare)
    if args.from_feedback:
        return command.from_feedback(settings, args.from_feedback, args.since)
    if not args.datasets:
        print("agentworker: eval: give DATASET..., --compare or --from-feedback", file=sys.stderr)
        return 2
    return command.run_eval(
        settings,
        args.datasets,
        graph_override=args.graph,
        thresholds_path=args.thresholds,
        judge_spec=args.judge,
        concurrency=args.concurrency,
    )


# schema -----------------------------------------------------------------------------------


def cmd_schema(args: argparse.Namespace) -> int:
    from events.schemas import SCHEMA_MODELS, schema_of

    if args.name:
        if args.name not in SCHEMA_MODELS:
            print(
                f"agentworker: unknown model {args.name!r}; one of: {', '.join(SCHEMA_MODELS)}",
                file=sys.stderr,
            )
            return 2
        print(json.dumps(schema_of(args.name), indent=2))
    else:
        print(json.dumps({name: schema_of(name) for name in SCHEMA_MODELS}, indent=2))
    return 0


# stack-spec -------------------------------------------------------------------------------


def cmd_tickets_import(args: argparse.Namespace) -> int:
    """``tickets import FILE``: see :mod:`workers.tickets`."""
    from workers.adapters.local.guard import read_dev_token
    from workers.costs import cost_of, merged_prices, price_for
    from workers.tickets import run

    settings = _settings(args, config="config", state_dir="state_dir")
    columns = {str(k): v for k, v in settings.ticket_columns.items()}
    if args.target != "local":
        from workers.errors import AgentWorkerError
        from workers.tickets import run_to_queue

        try:
            sqs, queue_url = _inbound_queue(args.target, settings)
        except AgentWorkerError as exc:
            print(f"agentworker: tickets import: {exc}", file=sys.stderr)
            return 2
        return run_to_queue(args.file, sqs, queue_url, columns=columns, as_json=args.json)
    token = os.environ.get("AGENTWORKER_TOKEN") or read_dev_token(_state_dir_of_cli())
    price = price_for(settings.model.split(":", 1)[-1], merged_prices(settings.prices))

    def priced(usage: Any) -> float | None:
        return None if price is None else cost_of(usage, price).total_cost

    return run(
        args.file,
        url=args.url,
        token=token,
        concurrency=args.concurrency,
        timeout=args.timeout,
        columns=columns,
        price=priced,
        as_json=args.json,
    )


def cmd_stack_spec(args: argparse.Namespace) -> int:
    from workers.stack import export_json

    text = export_json()
    if args.out is None:
        print(text, end="")
    else:
        args.out.write_text(text)
        print(f"agentworker: wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
