"""``StagedCheckpointSaver``: LangGraph checkpoints staged in memory for one turn.

LangGraph writes checkpoints while the graph runs; we must not persist any of them unless the
run still holds the conversation's lease. So the graph runs against this saver, which starts
from the conversation's last checkpoint (one blob from the store) and keeps only the latest
checkpoint and its pending writes. At the end of the turn :meth:`export` yields one blob that
the core commits together with the outbox in a single write fenced by the run's token.

Only the latest checkpoint is kept (no time travel): it is all a resume needs, and it keeps the
bytes written per turn independent of the conversation's length.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import ormsgpack
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

STAGE_KEY = "agentworker_stage"
_FORMAT = 1


@dataclass
class _Saved:
    checkpoint_id: str
    checkpoint: tuple[str, bytes]
    metadata: tuple[str, bytes]
    parent_id: str | None
    writes: dict[tuple[str, int], tuple[str, str, tuple[str, bytes], str]] = field(
        default_factory=dict
    )


class StagedCheckpointSaver(BaseCheckpointSaver[int]):
    """One saver per process; each turn stages under its own key (``configurable``
    ``agentworker_stage``), so concurrent turns of different conversations never mix.
    Synchronous only: the core runs the graph with ``invoke`` in every runtime."""

    def __init__(self) -> None:
        super().__init__()
        self._stages: dict[str, dict[str, _Saved]] = {}
        self._lock = threading.Lock()

    # staging -----------------------------------------------------------------------------

    def stage(self, key: str, blob: bytes | None) -> None:
        """Start a turn under ``key`` from the stored checkpoint ``blob`` (``None``: new)."""
        with self._lock:
            self._stages[key] = self._decode(blob) if blob else {}

    def export(self, key: str) -> bytes:
        """The staged latest checkpoints as one blob, to be committed by the store."""
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
                }
                for ns, s in namespaces.items()
            },
        }
        return ormsgpack.packb(data)

    def drop(self, key: str) -> None:
        with self._lock:
            self._stages.pop(key, None)

    def message_ids(self, key: str) -> set[str]:
        """Ids of the messages in the staged root checkpoint (already in the message log)."""
        saved = self._ns(key).get("")
        if saved is None:
            return set()
        checkpoint: Checkpoint = self.serde.loads_typed(saved.checkpoint)
        return {m.id for m in checkpoint["channel_values"].get("messages", []) if m.id}

    @staticmethod
    def _decode(blob: bytes) -> dict[str, _Saved]:
        data = ormsgpack.unpackb(blob)
        if data.get("v") != _FORMAT:
            raise ValueError(f"unknown checkpoint format {data.get('v')!r}")
        out: dict[str, _Saved] = {}
        for ns, s in data["ns"].items():
            writes = {
                (task, idx): (task, chan, (val[0], val[1]), path)
                for task, idx, chan, val, path in s["w"]
            }
            out[ns] = _Saved(
                s["id"], (s["c"][0], s["c"][1]), (s["m"][0], s["m"][1]), s["p"], writes
            )
        return out

    def _ns(self, key: str) -> dict[str, _Saved]:
        try:
            return self._stages[key]
        except KeyError:
            raise KeyError(f"no staged checkpoint for {key!r}: call stage() first") from None

    @staticmethod
    def _config(conf: dict[str, Any], ns: str, checkpoint_id: str) -> RunnableConfig:
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
        return CheckpointTuple(
            config=self._config(conf, ns, saved.checkpoint_id),
            checkpoint=self.serde.loads_typed(saved.checkpoint),
            metadata=self.serde.loads_typed(saved.metadata),
            parent_config=self._config(conf, ns, saved.parent_id) if saved.parent_id else None,
            pending_writes=[
                (task, chan, self.serde.loads_typed(val))
                for (task, _), (_, chan, val, _) in sorted(
                    saved.writes.items(), key=lambda kv: (kv[0][0], kv[0][1])
                )
            ],
        )

    def list(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> Iterator[CheckpointTuple]:
        if config is None:
            return
        found = self.get_tuple(config)
        if found is not None and limit != 0:
            yield found

    def put(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        conf = config["configurable"]
        ns = conf.get("checkpoint_ns", "")
        key = self._key(config)
        self._ns(key)[ns] = _Saved(
            checkpoint_id=checkpoint["id"],
            checkpoint=self.serde.dumps_typed(checkpoint),
            metadata=self.serde.dumps_typed(get_checkpoint_metadata(config, metadata)),
            parent_id=conf.get("checkpoint_id"),
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
            saved.writes[slot] = (task_id, channel, self.serde.dumps_typed(value), task_path)

    def delete_thread(self, thread_id: str) -> None:
        with self._lock:
            self._stages.pop(thread_id, None)
