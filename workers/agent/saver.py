"""``StagedCheckpointSaver``: LangGraph checkpoints staged in memory for one turn.

LangGraph writes checkpoints while the graph runs; we must not persist any of them unless the
run still holds the conversation's lease. So the graph runs against this saver, which starts
from the conversation's last checkpoint (one blob from the store) and keeps only the latest
checkpoint of each namespace and its pending writes. At the end of the turn :meth:`export`
yields one blob that the core commits together with the outbox in a single write fenced by
the run's token.

The ``messages`` channel is stored as references: a message that is in the conversation's
append-only log (or enters it in the same commit) is kept as its id, and rebuilt from the log
window when the next turn stages the checkpoint. A reference that the window no longer
reaches is dropped, so ``messages`` holds at most the last ``context_window`` logged messages
the graph kept (starting at a user message when older ones were dropped). Every other channel
is stored whole. The bytes written per turn therefore grow with the new messages only.

Only the latest checkpoint is kept (no time travel): it is all a resume needs, and all that
``list()`` selects from (the tests of LangGraph's conformance suite that need earlier
checkpoints fail: ``tests/contract/test_saver_conformance.py`` names them). Channels that
rebuild their value from ancestor checkpoints (LangGraph's ``DeltaChannel``) are refused when
the app is loaded (``workers.agent.app``).
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import ormsgpack
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    WRITES_IDX_MAP,
    BaseCheckpointSaver,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
    get_checkpoint_id,
    get_checkpoint_metadata,
)

from workers.errors import PermanentError

STAGE_KEY = "agentworker_stage"
INTERRUPT = "__interrupt__"
"""The channel LangGraph writes an ``interrupt()`` to."""
MESSAGES = "messages"
_FORMAT = 2
_READABLE = (1, 2)
"""Format 1 kept the messages inline (only the current turn's); it is read as the log
window."""

Typed = tuple[str, bytes]
EncodedMessage = str | list[Any]
"""A log reference (the message id) or an inline message ``[type, bytes]``."""


@dataclass
class _Saved:
    checkpoint_id: str
    checkpoint: Typed
    """The checkpoint, serialized without its ``messages`` channel when that is kept in
    :attr:`messages`."""
    metadata: Typed
    parent_id: str | None
    messages: list[BaseMessage] | None = None
    writes: dict[tuple[str, int], tuple[str, str, Typed, str]] = field(default_factory=dict)


class StagedCheckpointSaver(BaseCheckpointSaver[int]):
    """One saver per process; each turn stages under its own key (``configurable``
    ``agentworker_stage``), so concurrent turns of different conversations never mix. The
    async methods serve graphs driven with ``astream`` (they do no I/O either)."""

    def __init__(self) -> None:
        super().__init__()
        self._stages: dict[str, dict[str, _Saved]] = {}
        self._lock = threading.Lock()

    # staging -----------------------------------------------------------------------------

    def stage(self, key: str, blob: bytes | None, log: Sequence[BaseMessage] = ()) -> None:
        """Start a turn under ``key`` from the stored checkpoint ``blob`` (``None``: new);
        ``log`` is the log window the ``messages`` references are resolved against."""
        staged = self._decode(blob, log) if blob else {}
        with self._lock:
            self._stages[key] = staged

    def export(self, key: str, logged: Mapping[str, BaseMessage]) -> bytes:
        """The staged latest checkpoints as one blob, to be committed by the store. A message
        that is in ``logged`` (the log window and what this turn appends to the log) is
        written as a reference."""
        namespaces = self._ns(key)
        data = {
            "v": _FORMAT,
            "ns": {
                ns: {
                    "id": s.checkpoint_id,
                    "c": list(s.checkpoint),
                    "m": list(s.metadata),
                    "p": s.parent_id,
                    "w": [
                        [task, idx, chan, list(val), path]
                        for (task, idx), (_, chan, val, path) in s.writes.items()
                    ],
                    "msgs": None if s.messages is None else self._refs(s.messages, logged),
                }
                for ns, s in namespaces.items()
            },
        }
        return ormsgpack.packb(data)

    def drop(self, key: str) -> None:
        with self._lock:
            self._stages.pop(key, None)

    def messages(self, key: str) -> list[BaseMessage]:
        """The ``messages`` channel of the staged root checkpoint (empty if none)."""
        saved = self._ns(key).get("")
        return [] if saved is None or saved.messages is None else list(saved.messages)

    def checkpoint_id(self, key: str) -> str | None:
        """The id of the staged root checkpoint (``None`` for a new conversation)."""
        saved = self._ns(key).get("")
        return None if saved is None else saved.checkpoint_id

    def _refs(
        self, messages: Sequence[BaseMessage], logged: Mapping[str, BaseMessage]
    ) -> list[EncodedMessage]:
        out: list[EncodedMessage] = []
        for m in messages:
            known = logged.get(m.id) if m.id else None
            if known is not None and (known is m or known == m):
                out.append(str(m.id))
            else:  # not in the log, or changed by the graph since it was logged
                out.append(list(self.serde.dumps_typed(m)))
        return out

    def _decode(self, blob: bytes, log: Sequence[BaseMessage]) -> dict[str, _Saved]:
        data = ormsgpack.unpackb(blob)
        version = data.get("v")
        if version not in _READABLE:
            raise ValueError(f"unknown checkpoint format {version!r}")
        by_id = {m.id: m for m in log if m.id}
        out: dict[str, _Saved] = {}
        for ns, s in data["ns"].items():
            writes = {
                (task, idx): (task, chan, (val[0], val[1]), path)
                for task, idx, chan, val, path in s["w"]
            }
            saved = _Saved(
                s["id"], (s["c"][0], s["c"][1]), (s["m"][0], s["m"][1]), s["p"], writes=writes
            )
            if s.get("msgs") is not None:
                saved.messages = self._resolve(s["msgs"], by_id, root=ns == "")
            elif version == 1 and ns == "":
                saved = self._from_format_1(saved, log)
            out[ns] = saved
        return out

    def _resolve(
        self, encoded: Sequence[EncodedMessage], by_id: Mapping[str, BaseMessage], *, root: bool
    ) -> list[BaseMessage]:
        messages: list[BaseMessage] = []
        dropped = False
        for item in encoded:
            if isinstance(item, str):
                found = by_id.get(item)
                if found is None:
                    dropped = True  # older than the log window
                    continue
                messages.append(found)
            else:
                messages.append(self.serde.loads_typed((item[0], item[1])))
        return _aligned(messages) if dropped and root else messages

    def _from_format_1(self, saved: _Saved, log: Sequence[BaseMessage]) -> _Saved:
        """A checkpoint written before references: its messages were the last turn's only
        (earlier turns were in the log); the log window stands in for them."""
        checkpoint: Checkpoint = self.serde.loads_typed(saved.checkpoint)
        inline = checkpoint["channel_values"].pop(MESSAGES, None)
        saved.checkpoint = self.serde.dumps_typed(checkpoint)
        if inline is not None:
            known = {m.id for m in log}
            saved.messages = _aligned(list(log)) + [m for m in inline if m.id not in known]
        return saved

    def _ns(self, key: str) -> dict[str, _Saved]:
        try:
            return self._stages[key]
        except KeyError:
            raise KeyError(f"no staged checkpoint for {key!r}: call stage() first") from None

    @staticmethod
    def _config(conf: Mapping[str, Any], ns: str, checkpoint_id: str) -> RunnableConfig:
        """A checkpoint's config, carrying the stage key along."""
        out = {"thread_id": conf["thread_id"], "checkpoint_ns": ns, "checkpoint_id": checkpoint_id}
        if STAGE_KEY in conf:
            out[STAGE_KEY] = conf[STAGE_KEY]
        return {"configurable": out}

    @staticmethod
    def _key(config: RunnableConfig) -> str:
        conf = config["configurable"]
        return str(conf.get(STAGE_KEY) or conf["thread_id"])

    # BaseCheckpointSaver -----------------------------------------------------------------

    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        conf = config["configurable"]
        ns = conf.get("checkpoint_ns", "")
        saved = self._ns(self._key(config)).get(ns)
        if saved is None:
            return None
        wanted = get_checkpoint_id(config)
        if wanted and wanted != saved.checkpoint_id:
            return None
        return self._tuple(conf, ns, saved, self.serde.loads_typed(saved.metadata))

    def list(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> Iterator[CheckpointTuple]:
        """The kept checkpoints that match, as LangGraph's ``InMemorySaver`` selects them but
        from the latest checkpoint of each namespace only (the history is not kept): those
        of ``config``'s thread, in its ``checkpoint_ns`` if given (else every namespace) and
        with its ``checkpoint_id`` if given; whose metadata holds every key of ``filter``
        with that value; whose id sorts below ``before``'s checkpoint id; at most ``limit``.
        ``config=None`` lists nothing: the saver holds the turns staged in this process,
        not every thread."""
        if config is None or (limit is not None and limit <= 0):
            return
        conf = config["configurable"]
        wanted_ns = conf.get("checkpoint_ns")
        wanted_id = get_checkpoint_id(config)
        below = get_checkpoint_id(before) if before else None
        found = 0
        for ns, saved in tuple(self._ns(self._key(config)).items()):
            if wanted_ns is not None and ns != wanted_ns:
                continue
            if (wanted_id and saved.checkpoint_id != wanted_id) or (
                below and saved.checkpoint_id >= below
            ):
                continue
            metadata: CheckpointMetadata = self.serde.loads_typed(saved.metadata)
            if filter and not all(metadata.get(k) == v for k, v in filter.items()):
                continue
            yield self._tuple(conf, ns, saved, metadata)
            found += 1
            if limit is not None and found >= limit:
                return

    def _tuple(
        self, conf: Mapping[str, Any], ns: str, saved: _Saved, metadata: CheckpointMetadata
    ) -> CheckpointTuple:
        checkpoint: Checkpoint = self.serde.loads_typed(saved.checkpoint)
        if saved.messages is not None:
            checkpoint["channel_values"][MESSAGES] = list(saved.messages)
        return CheckpointTuple(
            config=self._config(conf, ns, saved.checkpoint_id),
            checkpoint=checkpoint,
            metadata=metadata,
            parent_config=self._config(conf, ns, saved.parent_id) if saved.parent_id else None,
            pending_writes=[
                (task, chan, self.serde.loads_typed(val))
                for (task, _), (_, chan, val, _) in sorted(
                    saved.writes.items(), key=lambda kv: (kv[0][0], kv[0][1])
                )
            ],
        )

    def put(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        conf = config["configurable"]
        ns = conf.get("checkpoint_ns", "")
        values = checkpoint["channel_values"]
        held = values.get(MESSAGES)
        messages: list[BaseMessage] | None = None
        if isinstance(held, list) and all(isinstance(m, BaseMessage) for m in held):
            messages = list(held)
            rest = {k: v for k, v in values.items() if k != MESSAGES}
            checkpoint = {**checkpoint, "channel_values": rest}
        self._ns(self._key(config))[ns] = _Saved(
            checkpoint_id=checkpoint["id"],
            checkpoint=self.serde.dumps_typed(checkpoint),
            metadata=self.serde.dumps_typed(get_checkpoint_metadata(config, metadata)),
            parent_id=conf.get("checkpoint_id"),
            messages=messages,
        )
        return self._config(conf, ns, checkpoint["id"])

    def put_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        conf = config["configurable"]
        saved = self._ns(self._key(config)).get(conf.get("checkpoint_ns", ""))
        if saved is None or saved.checkpoint_id != conf["checkpoint_id"]:
            raise ValueError("put_writes for a checkpoint that is not the staged latest one")
        for idx, (channel, value) in enumerate(writes):
            slot = (task_id, WRITES_IDX_MAP.get(channel, idx))
            if slot[1] >= 0 and slot in saved.writes:
                continue
            saved.writes[slot] = (
                task_id,
                channel,
                self._dump(value, channel, task_path),
                task_path,
            )

    def _dump(self, value: Any, channel: str, task_path: str) -> Typed:
        try:
            return self.serde.dumps_typed(value)
        except (TypeError, ValueError) as exc:
            node = _node_of(task_path)
            what = (
                "called interrupt() with a value" if channel == INTERRUPT else f"wrote {channel!r}"
            )
            raise PermanentError(f"node {node!r} {what} that cannot be stored: {exc}") from None

    def delete_thread(self, thread_id: str) -> None:
        with self._lock:
            self._stages.pop(thread_id, None)

    # async twins of the above: the same in-memory work, for graphs driven with astream ----

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        return self.get_tuple(config)

    async def alist(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[CheckpointTuple]:
        for item in self.list(config, filter=filter, before=before, limit=limit):
            yield item

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        return self.put(config, checkpoint, metadata, new_versions)

    async def aput_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        self.put_writes(config, writes, task_id, task_path)

    async def adelete_thread(self, thread_id: str) -> None:
        self.delete_thread(thread_id)


def _node_of(task_path: str) -> str:
    """The node a task runs, from LangGraph's task path (``~__pregel_pull, <node>`` for a
    node; a ``Send`` task's path holds only indexes)."""
    parts = [p.strip() for p in task_path.split(",")]
    if len(parts) > 1 and parts[0].endswith("__pregel_pull"):
        return parts[1]
    return f"a Send task ({task_path})"


def _aligned(messages: list[BaseMessage]) -> list[BaseMessage]:
    """``messages`` from its first user message on, when older ones were cut away: a window
    that starts with a tool result or a tool call without its result is not a valid chat
    for most models. Without any user message, leading tool results are dropped."""
    for i, m in enumerate(messages):
        if isinstance(m, HumanMessage):
            return messages[i:]
    start = 0
    for m in messages:
        if not (isinstance(m, ToolMessage) or (isinstance(m, AIMessage) and m.tool_calls)):
            break
        start += 1
    return messages[start:]
