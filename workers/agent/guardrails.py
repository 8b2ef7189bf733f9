"""A model provider's own guardrail, as the turn's messages tell it: Bedrock Guardrails
(``guardrailConfig`` on every Converse call, see :mod:`workers.agent.models`) end an
intervened call with ``stopReason`` ``guardrail_intervened``, the guardrail's canned text as
the answer and, when traced, ``trace.guardrail`` with the assessments of the request
(``inputAssessment``) or of the model's output (``outputAssessments``). ``ChatBedrockConverse``
keeps both in the AI message's ``response_metadata``, streaming or not."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Literal

from langchain_core.messages import AIMessage, BaseMessage

from workers.core.model import ModelGuardrail

INTERVENED = "guardrail_intervened"
_POLICY_ITEMS = {
    "topicPolicy": ("topics",),
    "contentPolicy": ("filters",),
    "wordPolicy": ("customWords", "managedWordLists"),
    "sensitiveInformationPolicy": ("piiEntities", "regexes"),
    "contextualGroundingPolicy": ("filters",),
    "automatedReasoningPolicy": ("findings",),
}


def model_guardrails(messages: Iterable[BaseMessage]) -> tuple[ModelGuardrail, ...]:
    """One :class:`ModelGuardrail` per AI message whose call a guardrail intervened on."""
    found: list[ModelGuardrail] = []
    for message in messages:
        if not isinstance(message, AIMessage):
            continue
        meta = message.response_metadata or {}
        if meta.get("stopReason") != INTERVENED and meta.get("stop_reason") != INTERVENED:
            continue
        trace = meta.get("trace")
        guardrail = trace.get("guardrail") if isinstance(trace, Mapping) else None
        stage, policies = _assessed(guardrail if isinstance(guardrail, Mapping) else {})
        found.append(ModelGuardrail("bedrock", stage, policies))
    return tuple(found)


def _assessed(guardrail: Mapping[str, Any]) -> tuple[Literal["input", "output"], tuple[str, ...]]:
    """Which side the guardrail acted on and the policies that acted (untraced: the
    request's side, nothing named)."""
    inputs = guardrail.get("inputAssessment")
    input_policies = _acting(inputs.values() if isinstance(inputs, Mapping) else ())
    if input_policies:
        return "input", input_policies
    outputs = guardrail.get("outputAssessments")
    assessments = [
        a
        for group in (outputs.values() if isinstance(outputs, Mapping) else ())
        if isinstance(group, list)
        for a in group
    ]
    output_policies = _acting(assessments)
    if output_policies:
        return "output", output_policies
    return ("output", ()) if outputs else ("input", ())


def _acting(assessments: Iterable[Any]) -> tuple[str, ...]:
    """The policies of ``assessments`` with an item whose action is not ``NONE``."""
    acting: list[str] = []
    for assessment in assessments:
        if not isinstance(assessment, Mapping):
            continue
        for policy, lists in _POLICY_ITEMS.items():
            body = assessment.get(policy)
            if not isinstance(body, Mapping) or policy in acting:
                continue
            items = [i for key in lists if isinstance(body.get(key), list) for i in body[key]]
            if any(isinstance(i, Mapping) and i.get("action", "NONE") != "NONE" for i in items):
                acting.append(policy)
    return tuple(acting)
