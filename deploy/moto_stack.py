"""Create the packaged template on moto's CloudFormation: the check that the stack as a
whole is sound, offline (run by ``make validate`` and ``tests/functional``).

moto takes the template almost as CloudFormation would: the workflow's ``Definition`` object
becomes a ``DefinitionString`` (its substitutions through ``Fn::Sub``), and the code and
layers come from a bucket the packaged artifacts are uploaded to, as ``osls deploy`` does.
moto has no model for some types (API Gateway v2, alarms, bucket policies): it marks them
complete and creates nothing; :func:`create` reports them as skipped.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ARTIFACTS_BUCKET = "agentworker-artifacts"


@dataclass
class MotoStack:
    status: str
    created: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)

    def report(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "created": dict(sorted(self.created.items())),
            "skipped": dict(sorted(self.skipped.items())),
        }


def for_moto(template: dict[str, Any], bucket: str = ARTIFACTS_BUCKET) -> dict[str, Any]:
    """A copy of ``template`` as moto can create it (see the module's doc)."""
    data: dict[str, Any] = json.loads(json.dumps(template))
    for resource in data["Resources"].values():
        if resource["Type"] != "AWS::StepFunctions::StateMachine":
            continue
        props = resource["Properties"]
        if "Definition" in props:
            substitutions = props.pop("DefinitionSubstitutions", {})
            text = json.dumps(props.pop("Definition"))
            props["DefinitionString"] = {"Fn::Sub": [text, substitutions]}

    def point(node: Any) -> None:
        if isinstance(node, dict):
            if "S3Bucket" in node and "S3Key" in node:
                node["S3Bucket"], node["S3Key"] = bucket, str(node["S3Key"]).split("/")[-1]
            for value in node.values():
                point(value)
        elif isinstance(node, list):
            for value in node:
                point(value)

    point(data["Resources"])
    return data


def create(session: Any, template: dict[str, Any], artifacts: Path, stack_name: str) -> MotoStack:
    """Upload ``artifacts/*.zip`` and create ``template`` with ``session``'s clients (inside
    ``mock_aws`` or against a moto server)."""
    s3 = session.client("s3")
    s3.create_bucket(Bucket=ARTIFACTS_BUCKET)
    for artifact in sorted(artifacts.glob("*.zip")):
        s3.upload_file(str(artifact), ARTIFACTS_BUCKET, artifact.name)
    cf = session.client("cloudformation")
    cf.create_stack(
        StackName=stack_name,
        TemplateBody=json.dumps(for_moto(template)),
        Capabilities=["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM"],
    )
    stack = cf.describe_stacks(StackName=stack_name)["Stacks"][0]
    summaries = cf.list_stack_resources(StackName=stack_name)["StackResourceSummaries"]
    made = {s["LogicalResourceId"] for s in summaries if s["ResourceType"]}
    result = MotoStack(status=str(stack["StackStatus"]))
    for logical, resource in template["Resources"].items():
        (result.created if logical in made else result.skipped)[resource["Type"]] += 1
    return result
