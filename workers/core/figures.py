"""The per-turn figures ``agentworker stats`` reads, as trace tags of the turn's trace.

Figures known only when a turn ends are set on the turn's root span as attributes named
``mlflow.traceTag.<tag>`` (what MLflow's span export turns into trace tags); the tags' values
are strings, as MLflow's are. Also MLflow's own shapes for the root span's token usage.
"""

from __future__ import annotations

from events.outbound import TokenUsage
from workers.core.model import TurnOutput

TAG_ATTRIBUTE_PREFIX = "mlflow.traceTag."
"""A root-span attribute with this prefix becomes the trace tag named by the rest."""

COST_USD = "agentworker.cost_usd"
INPUT_TOKENS = "agentworker.input_tokens"
OUTPUT_TOKENS = "agentworker.output_tokens"
CACHE_READ_TOKENS = "agentworker.cache_read_tokens"
CACHE_WRITE_TOKENS = "agentworker.cache_write_tokens"
TTFT_MS = "agentworker.ttft_ms"
MODEL_CALLS = "agentworker.model_calls"
MODEL_THROTTLES = "agentworker.model_throttles"
GUARDRAIL_INTERVENTIONS = "guardrail.interventions"
"""A root-span attribute (set by the guard steps), read as a figure when present."""

EVAL_RUN_TAG = "eval_run_id"
"""Set on every turn trace of an eval's conversations: the eval run's id."""
EVAL_CONVERSATION_PREFIX = "eval:"
"""How an eval's conversation ids begin: ``stats`` tells its turns from real traffic by
this and by ``EVAL_RUN_TAG`` (a run cut off before it tagged its traces)."""

TURN_TAGS = (
    COST_USD,
    INPUT_TOKENS,
    OUTPUT_TOKENS,
    CACHE_READ_TOKENS,
    CACHE_WRITE_TOKENS,
    TTFT_MS,
    MODEL_CALLS,
    MODEL_THROTTLES,
)


def turn_figures(output: TurnOutput) -> dict[str, str]:
    """The figures of a finished turn, by tag (cost and time to first token only when
    known)."""
    usage = output.usage
    figures = {
        INPUT_TOKENS: str(usage.input_tokens),
        OUTPUT_TOKENS: str(usage.output_tokens),
        CACHE_READ_TOKENS: str(usage.cache_read_tokens),
        CACHE_WRITE_TOKENS: str(usage.cache_write_tokens),
        MODEL_CALLS: str(output.model_calls),
        MODEL_THROTTLES: str(output.model_throttles),
    }
    if output.cost is not None:
        figures[COST_USD] = f"{output.cost.total_cost:.8f}"
    if output.time_to_first_token_ms is not None:
        figures[TTFT_MS] = f"{output.time_to_first_token_ms:.3f}"
    return figures


def as_tag_attributes(figures: dict[str, str]) -> dict[str, str]:
    """``figures`` as the root-span attributes that become the trace's tags."""
    return {TAG_ATTRIBUTE_PREFIX + key: value for key, value in figures.items()}


def usage_attribute(usage: TokenUsage) -> dict[str, int]:
    """``usage`` as MLflow's ``mlflow.chat.tokenUsage`` span attribute."""
    out = {
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "total_tokens": usage.total_tokens,
    }
    if usage.cache_read_tokens or usage.cache_write_tokens:
        out["cache_read_input_tokens"] = usage.cache_read_tokens
        out["cache_creation_input_tokens"] = usage.cache_write_tokens
    return out
