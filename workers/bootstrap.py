"""Composition root: builds adapters from ``Settings``. Nothing is built at import time."""

from __future__ import annotations

import asyncio
from typing import Any

from events.workflow import RunRef
from workers.config import Settings
from workers.core.ports import Clock, NullTracer, TicketStore, Tracer
from workers.core.steps import Deps, TurnSettings


def turn_settings(settings: Settings) -> TurnSettings:
    return TurnSettings(
        lease_ttl=settings.lease_ttl_seconds,
        context_window=settings.context_window,
        default_policy=settings.double_texting,
        max_turns_per_run=settings.max_turns_per_run,
        retry_attempts=settings.retry_attempts,
        stream=settings.stream,
        price_input_per_mtok=settings.price_input_per_mtok,
        price_output_per_mtok=settings.price_output_per_mtok,
    )


def build_tracer(settings: Settings) -> Tracer:
    if not settings.tracing:
        return NullTracer()
    from workers.observability import MlflowTracer

    settings.state_dir.mkdir(parents=True, exist_ok=True)
    artifacts = settings.state_dir / "mlartifacts" if settings.mlflow_tracking_uri is None else None
    return MlflowTracer(settings.tracking_uri, settings.mlflow_experiment, artifact_dir=artifacts)


def build_agent(settings: Settings, tickets: TicketStore, clock: Clock, model: Any = None) -> Any:
    """The LangGraph turn agent (imports LangGraph: only the ``turn`` side calls this)."""
    from workers.agent.models import ModelOptions, make_model
    from workers.agent.prompts import load_system_prompt
    from workers.agent.runner import LangGraphTurnAgent
    from workers.agent.tools import SUPPORT_TOOLS

    chat_model = model or make_model(
        settings.model,
        ModelOptions(region=settings.bedrock_region, endpoint_url=settings.bedrock_endpoint_url),
    )
    return LangGraphTurnAgent(
        chat_model,
        SUPPORT_TOOLS,
        system_prompt=load_system_prompt(settings.prompt_version),
        approval_tools=frozenset(settings.approval_tools),
        tickets=tickets,
        clock=clock,
    )


def build_embedded(settings: Settings, *, model: Any = None, tracer: Tracer | None = None) -> Any:
    """The embedded runtime on the running event loop (call from async code)."""
    from workers.adapters.clock import SystemClock
    from workers.adapters.local.hub import LocalHub, LocalReplySink
    from workers.adapters.local.runtime import EmbeddedRuntime, LocalWorkflowStarter
    from workers.adapters.local.sqlite_store import SqliteConversationStore

    loop = asyncio.get_running_loop()
    clock = SystemClock()
    store = SqliteConversationStore(settings.db_path)
    hub = LocalHub(loop)
    queue: asyncio.Queue[RunRef] = asyncio.Queue()
    starter = LocalWorkflowStarter(loop, queue)
    deps = Deps(
        store=store,
        agent=build_agent(settings, store, clock, model),
        sink=LocalReplySink(hub),
        starter=starter,
        clock=clock,
        tracer=tracer if tracer is not None else build_tracer(settings),
        settings=turn_settings(settings),
    )
    return EmbeddedRuntime(
        settings=settings, store=store, deps=deps, hub=hub, queue=queue, starter=starter
    )
