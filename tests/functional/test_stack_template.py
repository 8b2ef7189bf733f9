"""The packaged stack (``make package`` writes it; ``make test`` runs that first): moto's
CloudFormation creates it, and its names, keys and settings are the code's."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from deploy import moto_stack
from deploy.package import OUT, TEMPLATE
from workers.adapters.aws.tables import TTL_ATTRIBUTE, DynamoDBTableSpec
from workers.config import ENV_PREFIX, Settings
from workers.stack import FUNCTIONS, QUEUE_MAX_RECEIVES, StackNames

pytestmark = pytest.mark.filterwarnings("ignore:Tried to parse:UserWarning")  # moto's skips

STAGE = "dev"
NAMES = StackNames(f"agentworker-{STAGE}")
SKIPPED_BY_MOTO = {
    "AWS::ApiGatewayV2::Api",
    "AWS::ApiGatewayV2::Authorizer",
    "AWS::ApiGatewayV2::Deployment",
    "AWS::ApiGatewayV2::Integration",
    "AWS::ApiGatewayV2::Route",
    "AWS::ApiGatewayV2::Stage",
    "AWS::CloudWatch::Alarm",
    "AWS::S3::BucketPolicy",
    "AWS::Scheduler::ScheduleGroup",
}
"""Types moto's CloudFormation has no model for: it marks them complete and creates nothing."""


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    if not TEMPLATE.is_file():
        pytest.fail(f"{TEMPLATE} is missing: `make test` packages the stack first (make package)")
    data: dict[str, Any] = json.loads(TEMPLATE.read_text())
    return data


def resources(template: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {k: r for k, r in template["Resources"].items() if r["Type"] == kind}


@pytest.fixture(scope="module")
def created(template: dict[str, Any]) -> Iterator[dict[str, Any]]:
    with mock_aws():
        session = boto3.session.Session(region_name="us-east-1")
        stack = moto_stack.create(session, template, OUT, f"agentworker-{STAGE}")
        yield {"stack": stack, "session": session}


def test_moto_creates_the_packaged_stack(template: dict[str, Any], created: dict[str, Any]) -> None:
    stack: moto_stack.MotoStack = created["stack"]
    report = stack.report()
    print(json.dumps(report, indent=2))  # shown with -s: what moto created and skipped
    assert stack.status == "CREATE_COMPLETE"
    assert set(stack.skipped) <= SKIPPED_BY_MOTO, report
    assert stack.created.total() + stack.skipped.total() == len(template["Resources"])
    for needed in (
        "AWS::DynamoDB::Table",
        "AWS::StepFunctions::StateMachine",
        "AWS::Lambda::Function",
        "AWS::Lambda::LayerVersion",
        "AWS::SQS::Queue",
        "AWS::SNS::Topic",
        "AWS::Events::Rule",
        "AWS::IAM::Role",
    ):
        assert stack.created[needed] >= 1, needed
    assert stack.created["AWS::Lambda::Function"] == len(FUNCTIONS)


def test_what_moto_created_matches_the_code(created: dict[str, Any]) -> None:
    session = created["session"]
    table = session.client("dynamodb").describe_table(TableName=NAMES.table)["Table"]
    spec = DynamoDBTableSpec(NAMES.table).create_request()
    assert table["KeySchema"] == spec["KeySchema"]
    assert {i["IndexName"] for i in table["GlobalSecondaryIndexes"]} == {
        i["IndexName"] for i in spec["GlobalSecondaryIndexes"]
    }
    sqs = session.client("sqs")
    url = sqs.get_queue_url(QueueName=NAMES.queue)["QueueUrl"]
    redrive = json.loads(
        sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["RedrivePolicy"])["Attributes"][
            "RedrivePolicy"
        ]
    )
    assert int(redrive["maxReceiveCount"]) == QUEUE_MAX_RECEIVES
    assert redrive["deadLetterTargetArn"].endswith(NAMES.dlq)
    machines = session.client("stepfunctions").list_state_machines()["stateMachines"]
    assert [m["name"] for m in machines] == [NAMES.state_machine("express")]
    definition = session.client("stepfunctions").describe_state_machine(
        stateMachineArn=machines[0]["stateMachineArn"]
    )["definition"]
    assert "${" not in definition and f"function:{NAMES.prefix}-turn" in definition


def test_the_stack_and_the_code_agree_on_names_keys_ttl_and_settings(
    template: dict[str, Any],
) -> None:
    [table] = resources(template, "AWS::DynamoDB::Table").values()
    props = table["Properties"]
    spec = DynamoDBTableSpec(NAMES.table).create_request()
    assert props["TableName"] == NAMES.table
    for key in ("KeySchema", "AttributeDefinitions", "LocalSecondaryIndexes"):
        assert props[key] == spec[key], key
    assert props["GlobalSecondaryIndexes"] == spec["GlobalSecondaryIndexes"]
    assert props["TimeToLiveSpecification"]["AttributeName"] == TTL_ATTRIBUTE
    queues = {r["Properties"]["QueueName"] for r in resources(template, "AWS::SQS::Queue").values()}
    assert {NAMES.queue, NAMES.dlq} <= queues
    topics = {r["Properties"]["TopicName"] for r in resources(template, "AWS::SNS::Topic").values()}
    assert NAMES.topic in topics
    settings = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
    functions = resources(template, "AWS::Lambda::Function")
    assert {f"{NAMES.prefix}-{f}" for f in FUNCTIONS} == {
        r["Properties"]["FunctionName"] for r in functions.values()
    }
    for logical, function in functions.items():
        env = set(function["Properties"]["Environment"]["Variables"])
        ours = {name for name in env if not name.startswith("POWERTOOLS_")}
        assert ours <= settings, (logical, ours - settings)
        needed = {
            "AGENTWORKER_TABLE_NAME",
            "AGENTWORKER_BUCKET_NAME",
            "AGENTWORKER_STATE_MACHINE_ARN",
        }
        assert needed <= env, logical
        assert function["Properties"]["Architectures"] == ["arm64"]
        assert function["Properties"]["Runtime"] == "python3.12"
    turn = functions["TurnLambdaFunction"]["Properties"]["Environment"]["Variables"]
    assert turn["AGENTWORKER_MODEL"].startswith("bedrock:")


def test_every_function_handler_exists() -> None:
    import importlib

    for function in FUNCTIONS:
        module = importlib.import_module(f"workers.handlers.{function}")
        assert callable(module.handler)
    assert Path(TEMPLATE).parent == OUT


def test_the_data_keys_service_grants_hold_for_this_account_only(template: dict[str, Any]) -> None:
    [key] = resources(template, "AWS::KMS::Key").values()
    statements = key["Properties"]["KeyPolicy"]["Statement"]
    [services] = [s for s in statements if "Service" in s["Principal"]]
    assert services["Condition"] == {
        "StringEquals": {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}
    }


def test_idle_conversations_expire_in_the_table_and_the_bucket(template: dict[str, Any]) -> None:
    buckets = resources(template, "AWS::S3::Bucket")
    rules = buckets["StateBucket"]["Properties"]["LifecycleConfiguration"]["Rules"]
    [retention] = [r for r in rules if r["Id"] == "conversation-retention"]
    assert retention["Prefix"] == "conversations/" and retention["ExpirationInDays"] == 30  # dev
    [table] = resources(template, "AWS::DynamoDB::Table").values()
    assert table["Properties"]["TimeToLiveSpecification"]["Enabled"] is True


def test_both_apis_throttle_at_the_stage(template: dict[str, Any]) -> None:
    stages = resources(template, "AWS::ApiGatewayV2::Stage")
    assert set(stages) == {"HttpApiStage", "WebsocketsDeploymentStage"}
    for stage in stages.values():
        settings = stage["Properties"]["DefaultRouteSettings"]
        assert (settings["ThrottlingRateLimit"], settings["ThrottlingBurstLimit"]) == (50, 100)


def test_users_reach_http_routes_through_the_jwt_authorizer(template: dict[str, Any]) -> None:
    routes = {
        r["Properties"]["RouteKey"]: r["Properties"]
        for r in resources(template, "AWS::ApiGatewayV2::Route").values()
    }
    assert (
        routes["POST /v1/conversations/{conversation_id}/approvals"]["AuthorizationType"] == "JWT"
    )
    assert (
        routes["POST /conversations/{conversation_id}/approvals"]["AuthorizationType"] == "AWS_IAM"
    )
    authorizers = resources(template, "AWS::ApiGatewayV2::Authorizer").values()
    [authorizer] = [a for a in authorizers if a["Properties"]["AuthorizerType"] == "JWT"]
    jwt = authorizer["Properties"]["JwtConfiguration"]
    assert jwt["Issuer"].endswith("/auth-issuer}}") and jwt["Audience"][0].endswith(
        "/auth-audience}}"
    )


def test_websocket_connections_go_through_the_authorizer(template: dict[str, Any]) -> None:
    routes = {
        r["Properties"]["RouteKey"]: r["Properties"]
        for r in resources(template, "AWS::ApiGatewayV2::Route").values()
    }
    connect = routes["$connect"]
    assert connect["AuthorizationType"] == "CUSTOM"
    authorizers = resources(template, "AWS::ApiGatewayV2::Authorizer")
    [request] = [a for a in authorizers.values() if a["Properties"]["AuthorizerType"] == "REQUEST"]
    assert request["Properties"]["IdentitySource"] == [
        "route.request.header.Sec-WebSocket-Protocol"
    ]
    assert "AuthorizerLambdaFunction" in json.dumps(request["Properties"]["AuthorizerUri"])
    functions = resources(template, "AWS::Lambda::Function")
    env = functions["AuthorizerLambdaFunction"]["Properties"]["Environment"]["Variables"]
    assert env["AGENTWORKER_AUTH_JWKS_URL"].endswith("/auth-jwks-url}}")


def test_the_docs_say_how_many_resources_moto_creates_and_skips(
    template: dict[str, Any], created: dict[str, Any]
) -> None:
    stack: moto_stack.MotoStack = created["stack"]
    doc = (Path(__file__).parents[2] / "docs" / "aws.md").read_text()
    said = re.search(
        r"with (\d+) resources created of the template's (\d+);.*?\((\d+) skipped", doc, re.S
    )
    assert said, "docs/aws.md: the sentence with the resource counts is gone"
    made, total, skipped = (int(n) for n in said.groups())
    assert (made, total, skipped) == (
        stack.created.total(),
        len(template["Resources"]),
        stack.skipped.total(),
    )
