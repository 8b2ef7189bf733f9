"""One reply sink over several (both runtimes): each payload to every channel that has not
taken it yet."""

from __future__ import annotations

from collections.abc import Mapping

from events.outbound import OutboxPayload, StreamChunk
from workers.core.ports import ReplySink
from workers.errors import AgentWorkerError, PartialDelivery, PermanentError, RetryableError


class FanOutReplySink:
    """Sends to several named sinks (e.g. ``sns`` for integrations, ``websocket`` for the
    web chat, ``slack``).

    Every sink is tried: one refusing for good does not keep the others from the payload.
    A sink failing for now makes the send a ``PartialDelivery`` naming the ones that took
    it, so the core records them and a retry sends only where it failed (Slack does not
    show a reply twice); else the first permanent failure is raised."""

    def __init__(self, sinks: Mapping[str, ReplySink]) -> None:
        self._sinks = dict(sinks)

    def send(self, payload: OutboxPayload) -> None:
        self.send_missing(payload, frozenset())

    def send_missing(self, payload: OutboxPayload, done: frozenset[str]) -> None:
        failures: list[AgentWorkerError] = []
        delivered = set(done)
        waiting: list[str] = []
        for name, sink in self._sinks.items():
            if name in done:
                continue
            try:
                sink.send(payload)
            except RetryableError as exc:
                failures.append(exc)
                waiting.append(name)
            except PermanentError as exc:
                failures.append(exc)
                delivered.add(name)  # refused for good: a retry would not help
            else:
                delivered.add(name)
        if waiting:
            raise PartialDelivery(
                f"{', '.join(waiting)} failed for now ({failures[0]}); "
                f"{', '.join(sorted(delivered - set(waiting))) or 'no sink'} took it",
                delivered=frozenset(delivered),
            )
        if failures:
            raise failures[0]

    def send_chunk(self, chunk: StreamChunk) -> None:
        for sink in self._sinks.values():
            sink.send_chunk(chunk)
