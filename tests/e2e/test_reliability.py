"""The reliability suite at reduced size (``make reliability`` runs it at full size and writes
docs/RELIABILITY.md): faults right after every store write of the turn contract, in each
runtime; dependency faults; concurrent senders. Every invariant must hold, and every
write a conversation makes must have had a fault after it."""

from __future__ import annotations

import pytest

from reliability import (
    concurrency,
    dependencies,
    inprocess,
    killnine,
    schedules,
    webhooks,
    window,
    workflow,
)
from reliability.plan import Result


def assert_held(result: Result) -> None:
    found = result.findings
    assert found.ok, f"{result.runtime}: {found.as_dict()}\n" + "\n".join(found.details[:20])
    assert found.messages > 0
    assert not result.uncovered, f"{result.runtime}: no fault after {result.uncovered}"
    assert result.faults >= len(result.written) > 0


def test_faults_after_every_store_write_in_process() -> None:
    result = inprocess.run(every=False)
    assert_held(result)
    # the variants reach handover and per-sink marks; the second faults, the takeover
    assert {"handover_lease", "mark_sinks", "try_acquire_lease"} <= set(result.faults_by_write)


def test_kill_nine_of_the_embedded_server_after_every_store_write() -> None:
    result = killnine.run(every=False)
    assert_held(result)
    assert result.restarts >= result.faults
    assert "try_acquire_lease" in result.faults_by_write  # killed again in its recovery


def test_lambda_error_timeout_and_lost_response_after_every_store_write() -> None:
    result = workflow.run(every=False)
    assert_held(result)
    assert result.findings.unfired_faults == 0, result.findings.details  # planned: fired
    assert set(result.faults_by_kind) == set(workflow.KINDS)
    # the Standard workflow's wait for an approval, and the sweeper's takeover
    assert {"hold_for_approval", "try_acquire_lease"} <= set(result.faults_by_write)


def test_a_sender_stalled_past_its_lease_repeats_nothing_a_sink_shows() -> None:
    """Issue 17, item 18: each first reply stalls its worker past the lease right after
    the publish; Lambda's timeout (the production ratio) stops the worker unmarked, the
    run that takes over publishes again, and the FIFO topic drops the repeat (before: the
    reply reached SNS subscribers twice)."""
    result = window.run(every=False)
    found = result.findings
    assert found.ok, f"{found.as_dict()}\n" + "\n".join(found.details[:20])
    stalls = result.faults_by_kind[window.STALLS]
    assert stalls == 3 and found.messages == 9
    assert result.notes[window.STOPPED] >= stalls  # Lambda stopped each stalled worker
    assert result.notes[window.DROPPED] >= stalls  # and SNS each repeat


def test_dependency_faults_all_at_once() -> None:
    [result] = dependencies.run(every=False)
    found = result.findings
    assert found.ok, f"{found.as_dict()}\n" + "\n".join(found.details[:20])
    assert found.messages > 0
    assert set(result.faults_by_kind) == set(dependencies.ALL)
    assert all(n > 0 for n in result.faults_by_kind.values()), result.faults_by_kind


@pytest.fixture(scope="module")
def series() -> list[concurrency.Series]:
    return concurrency.run(concurrency.SMALL)


def test_concurrent_senders_keep_each_policys_order(series: list[concurrency.Series]) -> None:
    for case in series:
        found = case.findings
        assert found.ok, f"{case.name}: {found.as_dict()}\n" + "\n".join(found.details[:20])
        assert case.order_violations == 0, found.details[:20]
        assert found.unfired_faults == 0, found.details  # the takeover happened
    names = [case.name for case in series]
    assert len(names) == len(concurrency.POLICIES) + 2
    many = next(case for case in series if case.conversations > 1)
    assert many.findings.messages == 2 * concurrency.SMALL.conversations


def test_schedules_fire_once_through_kill_nine_and_repeated_invocations() -> None:
    result = schedules.run(every=False)
    assert_held(result)
    assert result.restarts >= result.faults  # and one more killed while its schedule was due
    on_aws = schedules.run_aws(every=False)
    found = on_aws.findings
    assert found.ok and found.messages == 3, found.details
    assert on_aws.notes["responses lost"] >= 3


def test_webhooks_reach_a_failing_receiver_once_each_in_order_through_kill_nine() -> None:
    result = webhooks.run(every=False)
    assert_held(result)
    assert result.notes["out of order"] == 0 and result.notes["bad signatures"] == 0
    assert result.notes["refused by the receiver"] > 0  # the receiver did fail
    on_aws = webhooks.run_aws(every=False)
    assert on_aws.findings.ok and on_aws.findings.messages == 4, on_aws.findings.details
    assert on_aws.notes["out of order"] == 0 and on_aws.notes["bad signatures"] == 0
    assert on_aws.notes["responses lost"] > 0 and on_aws.notes["refused by the receiver"] > 0
