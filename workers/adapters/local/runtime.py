"""``EmbeddedRuntime``: the turn contract on one machine with an asyncio worker pool.

Runs are queued by the ``LocalWorkflowStarter`` and driven by ``workers`` pool tasks, each
running ``drive_run`` in a thread (the core steps are synchronous, like the Lambda side).
One run per conversation at a time is guaranteed by the lease, not by the pool; different
conversations run concurrently. A lock file makes this process the state directory's only
owner, so at start it takes over every lease left by a crashed process and the sweeper
restarts conversations with pending messages: nothing accepted is lost.

A timer fires the schedules that are due (once a second; those that came due while the server
was down at its start), each through the core's ``fire_schedule``.

Erasure (``forget``, the retention) runs in its own small thread pool, so that however many
erasures wait, the other requests do not. While a conversation is being erased, and until
the runs it had are gone (a run cut off mid-turn may still be in its model call), no message
is accepted under its id: a conversation created again meanwhile would be shown the old
run's streamed chunks.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import threading
from collections import Counter, deque
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import IO, TYPE_CHECKING

from events.identity import LOCAL_USER, Principal
from events.inbound import InboundMessage
from events.workflow import RunRef
from workers.adapters.core_calls import CoreCalls
from workers.adapters.local.hub import LocalHub
from workers.adapters.local.sqlite_store import SqliteConversationStore
from workers.adapters.local.sqlite_tickets import SqliteTicketStore
from workers.config import Settings
from workers.core.feedback import give_feedback
from workers.core.model import (
    AcceptResult,
)
from workers.core.ports import Feedback
from workers.core.schedules import fire_schedule
from workers.core.steps import (
    Deps,
    Erasure,
    RunSummary,
    accept_message,
    cancel_turn,
    check_follow,
    create_conversation,
    drive_run,
    expire,
    forget_conversation,
    sweep,
)
from workers.errors import ConfigError, ErasureInProgress
from workers.statedir import private_dir, private_file

if TYPE_CHECKING:
    from workers.adapters.local.sqlite_memory import SqliteMemoryStore
    from workers.adapters.local.sqlite_schedules import SqliteScheduler
    from workers.adapters.local.webhooks import WebhookSender

log = logging.getLogger(__name__)


ERASERS = 2
"""Threads that erase conversations: erasures queue behind each other, never in front of
the other requests (which use the event loop's default pool)."""


class LocalWorkflowStarter:
    """Queues a run for the worker pool; callable from any thread. ``scheduled`` counts runs
    started but not yet picked up, so "idle" is never observed between the two."""

    def __init__(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[RunRef]) -> None:
        self._loop = loop
        self._queue = queue
        self._lock = threading.Lock()
        self.scheduled = 0
        self._live: Counter[str] = Counter()

    def start(self, run: RunRef) -> None:
        with self._lock:
            self.scheduled += 1
            self._live[run.conversation_id] += 1
        self._loop.call_soon_threadsafe(self._queue.put_nowait, run)

    def live(self, conversation_id: str) -> int:
        """Runs of the conversation started and not ended (queued or running)."""
        with self._lock:
            return self._live[conversation_id]

    def ended(self, run: RunRef) -> None:
        with self._lock:
            self._live[run.conversation_id] -= 1
            if self._live[run.conversation_id] <= 0:
                del self._live[run.conversation_id]

    def resume(self, task_token: str) -> None:
        """Embedded runs never wait inside an execution (approvals start a new run), so no
        token is ever issued here."""
        raise ConfigError(f"the embedded runtime issued no task token ({task_token[:16]}...)")

    def picked_up(self) -> None:
        with self._lock:
            self.scheduled -= 1


class EmbeddedRuntime(CoreCalls):
    """The runtime's stores, worker pool, sweeper and hub; ``stop`` closes the stores'
    database."""

    poll_seconds = 5.0
    """How often a request waiting for a run reads the store again (the hub tells sooner)."""
    wait_limit_seconds = 600.0
    """The longest a request waits for a run's answer."""
    timer_seconds = 1.0
    """How often the timer looks for schedules that are due."""

    def __init__(
        self,
        *,
        settings: Settings,
        store: SqliteConversationStore,
        tickets: SqliteTicketStore,
        deps: Deps,
        hub: LocalHub,
        queue: asyncio.Queue[RunRef],
        starter: LocalWorkflowStarter,
        lock_file: IO[str] | None = None,
        memory: SqliteMemoryStore | None = None,
        webhooks: WebhookSender | None = None,
        scheduler: SqliteScheduler | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.memory = memory
        """The graphs' long-term memory (its own SQLite file); closed with the runtime."""
        self.tickets = tickets
        """The agent's ticket store, in ``store``'s database."""
        self.webhooks = webhooks
        """The webhooks' sender (its queue: ``webhooks.db``), run while the runtime runs."""
        self.scheduler = scheduler
        """The schedules (in ``store``'s database), fired by the timer while it runs."""
        self.deps = deps
        self.hub = hub
        self._queue = queue
        self._starter = starter
        self._pool = ThreadPoolExecutor(settings.workers, thread_name_prefix="agentworker-run")
        self._erasers = ThreadPoolExecutor(ERASERS, thread_name_prefix="agentworker-erase")
        self._accepting: Counter[str] = Counter()
        """Accepts under way, by conversation (the event loop's thread only, as below)."""
        self._erasing: Counter[str] = Counter()
        """Erasures under way, by conversation."""
        self._draining: set[str] = set()
        """Erased conversations with a run still going."""
        self._tasks: list[asyncio.Task[None]] = []
        self._in_flight = 0
        self._lock_file = lock_file
        """The state directory's lock (taken at start when not given)."""
        # Recent run summaries (the demo and tests read them); bounded for a long-lived server.
        self.completed: deque[RunSummary] = deque(maxlen=10_000)

    # lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        if self._lock_file is None:
            self._lock_file = take_state_lock(self.settings.state_dir)
        self.store.clear_connections()
        taken = self.store.expire_leases(now=self.deps.clock.now())
        started = await asyncio.to_thread(sweep, self.deps)
        if taken or started:
            log.info("recovery: took over %d lease(s), restarted %d run(s)", taken, len(started))
        self._tasks = [
            asyncio.create_task(self._worker(i), name=f"agentworker-worker-{i}")
            for i in range(self.settings.workers)
        ]
        self._tasks.append(asyncio.create_task(self._sweeper(), name="agentworker-sweeper"))
        if self.webhooks is not None:
            self._tasks.append(
                asyncio.create_task(self.webhooks.run(), name="agentworker-webhooks")
            )
        if self.scheduler is not None:
            self._tasks.append(asyncio.create_task(self._timer(), name="agentworker-timer"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        # Runs in threads finish their current step; an unfinished one is recovered at start.
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._erasers.shutdown(wait=True, cancel_futures=True)
        await asyncio.to_thread(self.deps.tracer.close)
        self.store.close()
        if self.webhooks is not None:
            self.webhooks.queue.close()
        if self.memory is not None:
            self.memory.conn.close()
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    # API used by the server, the CLI and tests ------------------------------------------

    async def accept(
        self, msg: InboundMessage, principal: Principal = LOCAL_USER, *, owner: str | None = None
    ) -> AcceptResult:
        """Accept ``msg`` from ``principal`` (in-process callers: the local user; ``owner``:
        whose a conversation it creates is, see :func:`~workers.core.steps.accept_message`);
        ``ErasureInProgress`` while its conversation id is being erased."""
        cid = msg.conversation_id
        if self._erasing[cid] or cid in self._draining:
            raise ErasureInProgress(
                f"conversation_id: {cid!r} is being erased; try again in a moment"
            )
        self._accepting[cid] += 1
        try:
            return await asyncio.to_thread(
                partial(accept_message, owner=owner), self.deps, msg, principal
            )
        finally:
            self._accepting[cid] -= 1
            if not self._accepting[cid]:
                del self._accepting[cid]

    async def create_thread(
        self, conversation_id: str, principal: Principal, metadata: Mapping[str, object]
    ) -> bool:
        """Create ``principal``'s conversation before its first message (see
        :func:`~workers.core.steps.create_conversation`); ``False`` if the id is taken, or
        being erased."""
        if self._erasing[conversation_id] or conversation_id in self._draining:
            return False
        return await asyncio.to_thread(
            create_conversation, self.deps, conversation_id, principal, metadata
        )

    async def cancel(self, conversation_id: str, principal: Principal) -> None:
        """Stop the conversation's running turn (see :func:`~workers.core.steps.cancel_turn`);
        a run goes on with the messages that came after it."""
        run = await asyncio.to_thread(cancel_turn, self.deps, conversation_id, principal)
        if run is not None:
            self._starter.start(run)

    async def forget(
        self, conversation_id: str, principal: Principal, *, memories: bool = False
    ) -> Erasure:
        """Erase the conversation (see :func:`~workers.core.steps.forget_conversation`;
        ``memories``: its owner's memories too), in the erasure pool, with its id closed to
        new messages until the erasure is done and the runs it had are gone; then end every
        socket's follow of it."""
        cid = conversation_id
        self._erasing[cid] += 1
        try:
            while self._accepting[cid]:  # accepts already under way land before the erase
                await asyncio.sleep(0.002)
            loop = asyncio.get_running_loop()
            erasure = await loop.run_in_executor(
                self._erasers,
                partial(forget_conversation, memories=memories),
                self.deps,
                cid,
                principal,
            )
            if self.webhooks is not None:  # its deliveries not sent yet hold its text
                await asyncio.to_thread(self.webhooks.queue.forget, cid)
        finally:
            self._erasing[cid] -= 1
            if not self._erasing[cid]:
                del self._erasing[cid]
        self._erased(cid)
        return erasure

    def _erased(self, conversation_id: str) -> None:
        """After an erasure: end the follows; keep the id closed while a run of the erased
        conversation is still going (it stops at its next write)."""
        self.hub.forgotten(conversation_id)
        if self._starter.live(conversation_id):
            self._draining.add(conversation_id)

    async def expire(self) -> list[str]:
        """Erase the conversations idle past the retention (see
        :func:`~workers.core.steps.expire`), in the erasure pool."""
        loop = asyncio.get_running_loop()
        erased = await loop.run_in_executor(self._erasers, expire, self.deps)
        for conversation_id in erased:
            self._erased(conversation_id)
        return erased

    async def feedback(
        self,
        conversation_id: str,
        principal: Principal,
        *,
        reply_id: str,
        score: int,
        comment: str | None = None,
        withdrawn: bool = False,
    ) -> Feedback:
        """See :func:`~workers.core.feedback.give_feedback` (in a thread: the tracer may
        wait on its exporter)."""
        rate = partial(
            give_feedback, reply_id=reply_id, score=score, comment=comment, withdrawn=withdrawn
        )
        return await asyncio.to_thread(
            rate,
            self.deps,
            principal,
            conversation_id,
        )

    async def check_follow(self, conversation_id: str, principal: Principal) -> bool:
        """See :func:`~workers.core.steps.check_follow`."""
        return await asyncio.to_thread(check_follow, self.deps, conversation_id, principal)

    @property
    def busy(self) -> int:
        return self._in_flight + self._starter.scheduled

    async def wait_idle(self, timeout: float = 30.0) -> None:
        """Wait until no run is queued or running (demo, tests, benchmarks)."""
        async with asyncio.timeout(timeout):
            while self.busy:
                await asyncio.sleep(0.005)

    # the pool ----------------------------------------------------------------------------

    async def _worker(self, index: int) -> None:
        loop = asyncio.get_running_loop()
        while True:
            run = await self._queue.get()
            self._in_flight += 1
            self._starter.picked_up()
            try:
                summary = await loop.run_in_executor(self._pool, drive_run, self.deps, run)
                self.completed.append(summary)
            except Exception:
                # The lease expires and the sweeper restarts the conversation.
                log.exception("run %s failed; the sweeper will retry it", run.run_id)
            finally:
                self._in_flight -= 1
                self._starter.ended(run)
                if not self._starter.live(run.conversation_id):
                    self._draining.discard(run.conversation_id)
                self._queue.task_done()

    async def _timer(self) -> None:
        while True:
            try:
                await self.fire_due()
            except Exception:
                log.exception("firing schedules failed; trying again in %ss", self.timer_seconds)
            await asyncio.sleep(self.timer_seconds)

    async def fire_due(self) -> list[str]:
        """Fire the schedules due now (see :func:`~workers.core.schedules.fire_schedule`),
        the earliest first; what each firing did. One whose conversation is being erased
        waits for the erasure (which deletes it)."""
        if self.scheduler is None:
            return []
        due = await asyncio.to_thread(self.scheduler.due, self.deps.clock.now())
        outcomes: list[str] = []
        for conversation_id, schedule_id, at in due:
            cid = conversation_id
            if self._erasing[cid] or cid in self._draining:
                continue
            self._accepting[cid] += 1  # an erasure starting now waits for this accept
            try:
                outcomes.append(
                    await asyncio.to_thread(fire_schedule, self.deps, cid, schedule_id, at)
                )
            finally:
                self._accepting[cid] -= 1
                if not self._accepting[cid]:
                    del self._accepting[cid]
        return outcomes

    async def _sweeper(self) -> None:
        while True:
            await asyncio.sleep(self.settings.sweep_interval_seconds)
            try:
                await asyncio.to_thread(sweep, self.deps)
                await self.expire()
                if self.memory is not None:  # SqliteStore leaves expired items to a sweep
                    await asyncio.to_thread(self.memory.sweep_ttl)
            except Exception:
                log.exception(
                    "sweep failed; trying again in %ss", self.settings.sweep_interval_seconds
                )


def take_state_lock(state_dir: Path) -> IO[str]:
    """Make this process the state directory's only user (``ConfigError`` if another
    agentworker process uses it); the lock lasts while the returned file is open."""
    private_dir(state_dir)  # the owner's alone, tightened if an older version left it open
    handle = private_file(state_dir / "agentworker.lock").open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise ConfigError(
            f"AGENTWORKER_STATE_DIR={state_dir}: another agentworker process is using this"
            " state directory"
        ) from None
    handle.truncate(0)
    handle.write(str(os.getpid()))
    handle.flush()
    return handle
