"""Token cost: a price table per model id, and the cost of a call's token usage.

Pure functions, no I/O. Prices are USD per million tokens. Input tokens are counted as
LangChain reports them (``usage_metadata.input_tokens``, which for Bedrock Converse includes
the tokens read from and written to the prompt cache); the cache's share is priced at its own
rates and only the rest at the input rate. A model without a price gets no cost (never a
guessed one): :func:`price_for` returns ``None`` and the caller omits the cost.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from events.outbound import TokenUsage

log = logging.getLogger(__name__)


class ModelPrice(BaseModel):
    """USD per million tokens of one model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input: float = Field(ge=0, description="Uncached input tokens.")
    output: float = Field(ge=0, description="Output tokens.")
    cache_read: float | None = Field(
        None, ge=0, description="Input tokens read from the prompt cache (default: input)."
    )
    cache_write: float | None = Field(
        None, ge=0, description="Input tokens written to the prompt cache (default: input)."
    )


def _claude(inp: float, out: float) -> ModelPrice:
    # Anthropic's rates on Bedrock: cache writes 1.25x input (5-minute TTL), reads 0.1x.
    return ModelPrice(input=inp, output=out, cache_write=inp * 1.25, cache_read=inp * 0.1)


def _nova(inp: float, out: float) -> ModelPrice:
    # Nova: cache writes cost no more than input, reads are 75 % off.
    return ModelPrice(input=inp, output=out, cache_write=inp, cache_read=inp * 0.25)


DEFAULT_PRICES: Mapping[str, ModelPrice] = {
    "offline": ModelPrice(input=0, output=0, cache_read=0, cache_write=0),
    "anthropic.claude-3-haiku-20240307-v1:0": ModelPrice(input=0.25, output=1.25),
    "anthropic.claude-3-5-haiku-20241022-v1:0": _claude(0.80, 4.00),
    "anthropic.claude-3-5-sonnet-20241022-v2:0": _claude(3.00, 15.00),
    "anthropic.claude-3-7-sonnet-20250219-v1:0": _claude(3.00, 15.00),
    "anthropic.claude-sonnet-4-20250514-v1:0": _claude(3.00, 15.00),
    "anthropic.claude-sonnet-4-5-20250929-v1:0": _claude(3.00, 15.00),
    "anthropic.claude-haiku-4-5-20251001-v1:0": _claude(1.00, 5.00),
    "anthropic.claude-opus-4-20250514-v1:0": _claude(15.00, 75.00),
    "anthropic.claude-opus-4-1-20250805-v1:0": _claude(15.00, 75.00),
    "amazon.nova-micro-v1:0": _nova(0.035, 0.14),
    "amazon.nova-lite-v1:0": _nova(0.06, 0.24),
    "amazon.nova-pro-v1:0": _nova(0.80, 3.20),
}
"""Bedrock on-demand list prices (us-east-1, standard context, 5-minute cache) of the models
agentworker documents, and the offline model at zero. Override or extend with the ``prices``
setting; check them against the Bedrock pricing page before relying on a bill."""

_CROSS_REGION = re.compile(r"^(?:us|eu|apac|jp|au|ca|us-gov|global)\.")
"""The prefix of a Bedrock cross-region inference profile (``us.anthropic.claude-...``):
it bills as the model it names."""


@dataclass(frozen=True)
class Cost:
    """USD, in the shape of MLflow's ``mlflow.llm.cost`` span attribute (its trace cost is
    the sum of these over the trace's model spans). Cache reads and writes are input."""

    input_cost: float = 0.0
    output_cost: float = 0.0

    @property
    def total_cost(self) -> float:
        return self.input_cost + self.output_cost

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.input_cost + other.input_cost, self.output_cost + other.output_cost)

    def as_attribute(self) -> dict[str, float]:
        return {
            "input_cost": self.input_cost,
            "output_cost": self.output_cost,
            "total_cost": self.total_cost,
        }


def price_for(model_id: str | None, prices: Mapping[str, ModelPrice]) -> ModelPrice | None:
    """The price of ``model_id`` in ``prices`` (a cross-region inference profile is priced as
    its model); ``None`` when unknown."""
    if not model_id:
        return None
    return prices.get(model_id) or prices.get(base_model_id(model_id))


def base_model_id(model_id: str) -> str:
    """``model_id`` without the prefix of a Bedrock cross-region inference profile."""
    return _CROSS_REGION.sub("", model_id, count=1)


def cost_of(usage: TokenUsage, price: ModelPrice) -> Cost:
    """What ``usage`` costs at ``price``: uncached input, cache reads and cache writes each at
    their own rate."""
    read = price.input if price.cache_read is None else price.cache_read
    write = price.input if price.cache_write is None else price.cache_write
    input_cost = (
        usage.uncached_input_tokens * price.input
        + usage.cache_read_tokens * read
        + usage.cache_write_tokens * write
    ) / 1_000_000
    return Cost(input_cost=input_cost, output_cost=usage.output_tokens * price.output / 1_000_000)


def merged_prices(overrides: Mapping[str, ModelPrice]) -> dict[str, ModelPrice]:
    """The default table with ``overrides`` (the ``prices`` setting) on top."""
    return {**DEFAULT_PRICES, **overrides}


class UnpricedModels:
    """Warns once per process and model id that a model has no price (its cost is left out)."""

    def __init__(self) -> None:
        self._seen: set[str] = set()

    def warn(self, model_id: str | None) -> None:
        key = model_id or "<unknown>"
        if key in self._seen:
            return
        self._seen.add(key)
        log.warning(
            "no price for model %r: its cost is left out of traces and stats (set"
            " AGENTWORKER_PRICES to price it)",
            key,
        )


UNPRICED = UnpricedModels()
"""The process's one record of the models already warned about."""


__all__ = [
    "DEFAULT_PRICES",
    "UNPRICED",
    "Cost",
    "ModelPrice",
    "UnpricedModels",
    "base_model_id",
    "cost_of",
    "merged_prices",
    "price_for",
]
