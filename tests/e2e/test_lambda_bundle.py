"""The Lambda side with only the package's base dependencies, as a Lambda bundle has them:
``mlflow-tracing`` and not full ``mlflow``, no server extras, and without the distributions
``workers.packaging`` excludes from the ``turn`` bundle (uninstalled after ``pip install .``,
so an import of one of them fails the test). Every other test runs with the ``local`` and
``dev`` extras, which would hide a call that only full MLflow provides."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3  # type: ignore[import-untyped,unused-ignore]
import pytest

from events.identity import LOCAL_USER
from events.inbound import InboundMessage
from tests.fakes import RecordingSink, RecordingStarter, ScriptedAgent
from tests.functional.server_process import traces_of
from workers.adapters.aws.dynamodb_store import DynamoDBConversationStore
from workers.adapters.aws.tables import DynamoDBTableSpec
from workers.adapters.clock import SystemClock
from workers.core.steps import Deps, accept_message
from workers.packaging import excluded
from workers.sandbox.converse_stub import ConverseStubServer

ROOT = Path(__file__).parents[2]
EXCLUDED = sorted(excluded("turn"))
MODEL_ID = "anthropic.claude-3-5-haiku-20241022-v1:0"
REGION = "us-east-1"
INSTALLED = (
    "import importlib.metadata as md, json, re\n"  # names normalized as in PEP 503
    "names = {re.sub(r'[-_.]+', '-', d.metadata['Name']).lower() for d in md.distributions()}\n"
    "print(json.dumps(sorted(names)))"
)

TRACED_TURN = """
import json, sys, tempfile
from pathlib import Path
from workers.adapters.clock import SystemClock
from workers.adapters.local.sqlite_database import SqliteDatabase
from workers.adapters.local.sqlite_tickets import SqliteTicketStore
from workers.agent.offline import OfflineChatModel
from workers.bootstrap import build_agent
from workers.config import load_settings
from workers.core.model import TurnInput, TurnRequest
from workers.tracing.direct import DirectSink
from workers.tracing.mlflow_export import MlflowExport
from workers.tracing.recorder import SpanRecorder

tickets = SqliteTicketStore(SqliteDatabase(Path(tempfile.mkdtemp()) / "tickets.db"))
agent = build_agent(load_settings(), tickets, SystemClock(), model=OfflineChatModel())
tracer = SpanRecorder(DirectSink(lambda: MlflowExport(sys.argv[1], "agentworker")))
tags = {"conversation_id": "bundle:1", "run_id": "bundle-1", "channel": "sqs", "turn_id": "t1"}
with tracer.turn("turn", tags=tags, inputs={"texts": ["open a ticket about the bundle"]}):
    text = TurnInput("m1", "open a ticket about the bundle")
    request = TurnRequest("bundle:1", "t1", "sqs", [text], None, None, [], ["m1"])
    out = agent.run_turn(request, on_chunk=None, tracer=tracer)
assert tracer.flush()
print(json.dumps({"reply": out.reply_text}))
"""

RATED_TURN = """
import sys
from workers.core.ports import Feedback
from workers.tracing.direct import DirectSink
from workers.tracing.mlflow_export import MlflowExport
from workers.tracing.recorder import SpanRecorder

def tracer():
    return SpanRecorder(DirectSink(lambda: MlflowExport(sys.argv[1], "agentworker")))

turn = tracer()  # the turn function's invocation
tags = {"conversation_id": "bundle:rated", "run_id": "bundle-r", "turn_id": "t-rated"}
with turn.turn("turn", tags={**tags, "channel": "api"}, inputs={"texts": ["hi"]}):
    pass
assert turn.flush()
rate = tracer()  # the feedback function's, later
rating = Feedback(name="user_feedback", value=-1, source_id="u-1", rationale="meh", reply_id="r1")
rate.feedback("t-rated", rating)
assert rate.flush()
"""


TURN_HANDLER = """
import json, os, sys
from langchain_aws import ChatBedrockConverse
from workers.handlers import deliver, turn


class Context:
    function_name = "turn"
    invoked_function_arn = "arn:aws:lambda:us-east-1:000000000000:function:turn"
    memory_limit_in_mb = 1024
    aws_request_id = "bundle"
    function_version = "$LATEST"

    def get_remaining_time_in_millis(self):
        return 300_000


run = json.loads(sys.argv[1])
step = turn.handler({"op": "step", "run": run, "execution_id": "bundle-exec"}, Context())
# The step delivered its reply to SNS itself; the deliver handler (the workflow's Deliver
# state after a channel failure) finds nothing left: a re-delivery is a no-op.
delivered = deliver.handler({"conversation_id": run["conversation_id"]}, Context())
# ChatBedrockConverse built here too: region and credentials from the environment.
model = ChatBedrockConverse(
    model=os.environ["MODEL_ID"], endpoint_url=os.environ["AGENTWORKER_BEDROCK_ENDPOINT_URL"]
)
invoked = model.invoke("hello from the bundle").text
streamed = "".join(chunk.text for chunk in model.stream("streaming from the bundle"))
loaded = sorted({m.split(".")[0] for m in sys.modules})
result = {"step": step, "delivered": delivered, "invoked": invoked, "streamed": streamed}
print("RESULT " + json.dumps({**result, "loaded": loaded}))
"""


@pytest.fixture(scope="module")
def bundle_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with ``pip install .`` (no extras), then the ``turn`` bundle's exclusions
    uninstalled: every test here runs on what the trimmed bundle holds."""
    venv = tmp_path_factory.mktemp("lambda-venv")
    # No pip of its own: this venv's pip installs into it (``pip --python``).
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120
    )
    python = venv / "bin" / "python"
    pip(python, "install", "-q", "--no-compile", str(ROOT))
    installed = set(json.loads(run(python, INSTALLED)))
    # A stale entry (the closure no longer has it) would make the exclusion a no-op.
    assert set(EXCLUDED) <= installed, f"not installed: {set(EXCLUDED) - installed}"
    pip(python, "uninstall", "-y", "-q", *EXCLUDED)
    assert not set(EXCLUDED) & set(json.loads(run(python, INSTALLED)))
    return python


@pytest.fixture(scope="module")
def mlflow_url(mlflow_server_url: str) -> str:
    return mlflow_server_url


def pip(python: Path, *args: str) -> None:
    """``pip ARGS`` for the environment of ``python``, run by this venv's pip."""
    out = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]


def run(python: Path, code: str, *args: str, env: dict[str, str] | None = None) -> str:
    # Run outside the repository so the installed package, not the source tree, is imported.
    out = subprocess.run(
        [str(python), "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=python.parent,
        env={"PATH": "/usr/bin:/bin", "MLFLOW_DISABLE_TELEMETRY": "true", **(env or {})},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_the_bundle_has_mlflow_tracing_not_mlflow(bundle_python: Path) -> None:
    found = set(json.loads(run(bundle_python, INSTALLED)))
    assert "mlflow-tracing" in found and "aws-lambda-powertools" in found
    assert not {"mlflow", "mlflow-skinny", "uvicorn", "moto", "pytest"} & found
    assert not set(EXCLUDED) & found


def test_light_handlers_import_without_langgraph_langchain_or_mlflow(
    bundle_python: Path,
) -> None:
    loaded = json.loads(
        run(
            bundle_python,
            "import json, sys\n"
            "import workers.handlers.ingest, workers.handlers.deliver\n"
            "import workers.handlers.approve, workers.handlers.sweeper\n"
            "import workers.handlers.slack, workers.handlers.authorizer\n"
            "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))",
        )
    )
    assert not {"langgraph", "langchain_core", "langchain_aws", "mlflow", "fastapi"} & set(loaded)


def test_the_api_handler_answers_on_the_bundle(bundle_python: Path) -> None:
    """The ``api`` function's routes (FastAPI, the agent) import and answer from the bundle:
    ``/ok``, and a call that reached it with no verified caller is a 401."""
    answers = json.loads(
        run(
            bundle_python,
            "import json, sys\n"
            "from workers.handlers import api\n"
            "class Context:\n"
            "    function_name = 'api'\n"
            "    function_version = '$LATEST'\n"
            "    invoked_function_arn = 'arn:aws:lambda:us-east-1:1:function:api'\n"
            "    memory_limit_in_mb = 1024\n"
            "    aws_request_id = 'r-1'\n"
            "ctx = Context()\n"
            "def event(path):\n"
            "    http = {'method': 'GET', 'path': path, 'sourceIp': '127.0.0.1'}\n"
            "    return {'version': '2.0', 'rawPath': path, 'rawQueryString': '',\n"
            "            'headers': {}, 'requestContext': {'http': http}}\n"
            "ok = api.handler(event('/ok'), ctx)\n"
            "nobody = api.handler(event('/threads/t-1'), ctx)\n"
            "print(json.dumps([ok['statusCode'], json.loads(ok['body']), nobody['statusCode']]))",
        )
    )
    assert answers == [200, {"ok": True}, 401]


def test_a_traced_turn_runs_on_mlflow_tracing_alone(bundle_python: Path, mlflow_url: str) -> None:
    out = json.loads(run(bundle_python, TRACED_TURN, mlflow_url))
    assert out["reply"].startswith("Opened ticket 1")
    traces = traces_of(mlflow_url, "bundle:1")
    assert len(traces) == 1
    spans = {(s.name, s.span_type) for s in traces[0].data.spans}
    assert {("turn", "AGENT"), ("model", "CHAT_MODEL"), ("tool.create_ticket", "TOOL")} <= spans


def test_feedback_reaches_a_trace_on_mlflow_tracing_alone(
    bundle_python: Path, mlflow_url: str
) -> None:
    """The ``feedback`` function's MLflow calls (find the turn's trace by its tag, log the
    assessment) exist in ``mlflow-tracing``, the agent layer it ships with."""
    run(bundle_python, RATED_TURN, mlflow_url)
    [trace] = traces_of(mlflow_url, "bundle:rated")
    [rating] = [a for a in trace.info.assessments if a.name == "user_feedback"]
    assert (rating.value, rating.source.source_id, rating.rationale) == (-1, "u-1", "meh")


@pytest.fixture
def moto_url() -> Iterator[str]:
    server_module = pytest.importorskip("moto.server")
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def seed_run(session: Any, url: str, table: str, bucket: str, conversation_id: str) -> Any:
    """One accepted message and its lease in a fresh table: the run the handler's first step
    binds."""
    ddb, s3 = session.client("dynamodb", endpoint_url=url), session.client("s3", endpoint_url=url)
    DynamoDBTableSpec(table).create(ddb)
    s3.create_bucket(Bucket=bucket)
    store = DynamoDBConversationStore(dynamodb=ddb, table_name=table, s3=s3, bucket=bucket)
    starter = RecordingStarter()
    deps = Deps(
        store=store,
        agent=ScriptedAgent(),
        sink=RecordingSink(),
        starter=starter,
        clock=SystemClock(),
    )
    accept_message(
        deps, InboundMessage(conversation_id=conversation_id, text="open a ticket"), LOCAL_USER
    )
    assert len(starter.runs) == 1
    return starter.runs[0].model_dump(mode="json", exclude_none=True)


def test_the_turn_handler_serves_the_app_layer_make_package_builds(
    bundle_python: Path, moto_url: str, tmp_path: Path
) -> None:
    """An app that is not installed anywhere (``agentworker new``), bundled into the ``app``
    layer by ``deploy/app.py`` as ``make package`` does: the ``turn`` handler of the trimmed
    bundle finds it through the layer's app file and serves it (its first turn asks)."""
    from deploy.app import build_layer, resolve
    from workers.config import load_settings
    from workers.scaffold import write_app

    root = write_app("bundled_bot", tmp_path)
    bundle = resolve(load_settings(config=root / "agentworker.toml"))
    assert bundle.package == "bundled_bot" and bundle.source == root / "bundled_bot"
    layer = build_layer(bundle, tmp_path / "layer")
    assert (layer / "bundled_bot" / "graph.py").is_file()
    assert not (layer / "bundled_bot" / "tests").exists()
    session = boto3.session.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name=REGION
    )
    run_ref = seed_run(session, moto_url, "bundle-app", "bundle-app-blobs", "bundle:3")
    topic = session.client("sns", endpoint_url=moto_url).create_topic(Name="app-replies")
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_ENDPOINT_URL": moto_url,
        "PYTHONPATH": str(layer),  # /opt/python on Lambda
        "AGENTWORKER_CONFIG": str(layer / "agentworker.toml"),
        "AGENTWORKER_TABLE_NAME": "bundle-app",
        "AGENTWORKER_BUCKET_NAME": "bundle-app-blobs",
        "AGENTWORKER_REPLY_TOPIC_ARN": topic["TopicArn"],
        "AGENTWORKER_STATE_MACHINE_ARN": (
            f"arn:aws:states:{REGION}:000000000000:stateMachine:bundle-unused"
        ),
        "AGENTWORKER_TRACING": "false",
        "POWERTOOLS_METRICS_NAMESPACE": "bundle",
    }
    stdout = run(bundle_python, APP_TURN, json.dumps(run_ref), env=env)
    out = json.loads(stdout.splitlines()[-1])
    assert out["turn"] == "awaiting_approval", out  # the scaffold's first turn asks the name
    assert out["status"] == "awaiting_approval"


APP_TURN = """
import json, sys
from workers.handlers import turn


class Context:
    function_name = "turn"
    invoked_function_arn = "arn:aws:lambda:us-east-1:000000000000:function:turn"
    memory_limit_in_mb = 1024
    aws_request_id = "bundle-app"
    function_version = "$LATEST"

    def get_remaining_time_in_millis(self):
        return 300_000


run = json.loads(sys.argv[1])
step = turn.handler({"op": "step", "run": run, "execution_id": "bundle-app-exec"}, Context())
print(json.dumps(step))
"""


def test_the_turn_handler_runs_on_the_trimmed_bundle(
    bundle_python: Path, mlflow_url: str, moto_url: str
) -> None:
    """The real ``turn`` handler (Powertools, DynamoDB/S3, LangGraph, ChatBedrockConverse
    against the Converse stub, mlflow-tracing to a real MLflow server) publishing its reply
    to SNS, ``deliver``, and a ``ChatBedrockConverse`` built directly, invoked and streamed."""
    session = boto3.session.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name=REGION
    )
    run_ref = seed_run(session, moto_url, "bundle-turn", "bundle-turn-blobs", "bundle:2")
    sns, sqs = (session.client(n, endpoint_url=moto_url) for n in ("sns", "sqs"))
    topic = sns.create_topic(Name="bundle-replies")["TopicArn"]
    queue = sqs.create_queue(QueueName="bundle-replies")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])
    sns.subscribe(
        TopicArn=topic,
        Protocol="sqs",
        Endpoint=queue_arn["Attributes"]["QueueArn"],
        Attributes={"RawMessageDelivery": "true"},
    )
    with ConverseStubServer() as stub:
        env = {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": REGION,
            "AWS_ENDPOINT_URL": moto_url,
            "MODEL_ID": MODEL_ID,
            "AGENTWORKER_MODEL": f"bedrock:{MODEL_ID}",
            "AGENTWORKER_BEDROCK_ENDPOINT_URL": stub.endpoint_url,
            "AGENTWORKER_BEDROCK_REGION": REGION,
            "AGENTWORKER_TABLE_NAME": "bundle-turn",
            "AGENTWORKER_BUCKET_NAME": "bundle-turn-blobs",
            "AGENTWORKER_REPLY_TOPIC_ARN": topic,
            "AGENTWORKER_STATE_MACHINE_ARN": (
                f"arn:aws:states:{REGION}:000000000000:stateMachine:bundle-unused"
            ),
            "AGENTWORKER_TRACING": "true",
            "AGENTWORKER_MLFLOW_TRACKING_URI": mlflow_url,
            "POWERTOOLS_METRICS_NAMESPACE": "bundle",
        }
        stdout = run(bundle_python, TURN_HANDLER, json.dumps(run_ref), env=env)
        requests = stub.requests
    lines = [ln for ln in stdout.splitlines() if ln.startswith("RESULT ")]
    assert lines, stdout[-3000:]
    out = json.loads(lines[-1].removeprefix("RESULT "))
    assert out["step"]["outcome"] == "released" and out["step"]["turn"] == "replied"
    assert out["delivered"] == {"delivered": 0}
    assert "hello from the bundle" in out["invoked"]
    assert "streaming from the bundle" in out["streamed"]
    assert {"langgraph", "langchain_aws", "mlflow", "aws_lambda_powertools"} <= set(out["loaded"])
    # The handler's turn (a tool call, then the answer) and the two direct calls.
    assert len(requests) >= 4 and {r.model_id for r in requests} == {MODEL_ID}
    assert {r.streaming for r in requests} == {True, False}
    received = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10, WaitTimeSeconds=5)
    replies = [json.loads(m["Body"]) for m in received.get("Messages", [])]
    assert [r["type"] for r in replies] == ["reply"]
    assert replies[0]["text"].startswith("Opened ticket 1")
    traces = traces_of(mlflow_url, "bundle:2")
    assert len(traces) == 1
    spans = {(s.name, s.span_type) for s in traces[0].data.spans}
    assert {("turn", "AGENT"), ("model", "CHAT_MODEL"), ("tool.create_ticket", "TOOL")} <= spans


def test_an_app_made_by_agentworker_new_passes_its_own_test_in_a_fresh_venv(
    bundle_python: Path, tmp_path: Path
) -> None:
    """``pip install agentworker`` (no extras), ``agentworker new``, and the app's own test:
    nothing else needed (this venv is the trimmed bundle's: no numpy, no full mlflow)."""
    pip(bundle_python, "install", "-q", "pytest")
    agentworker = bundle_python.parent / "agentworker"
    env = {"PATH": f"{bundle_python.parent}:/usr/bin:/bin", "MLFLOW_DISABLE_TELEMETRY": "true"}
    made = subprocess.run(
        [str(agentworker), "new", "fresh_bot"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
        env=env,
    )
    assert made.returncode == 0, made.stderr
    tested = subprocess.run(
        [str(bundle_python), "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=tmp_path / "fresh_bot",
        env=env,
    )
    assert tested.returncode == 0, tested.stdout[-3000:] + tested.stderr[-2000:]
    assert "1 passed" in tested.stdout
