"""The webhooks' store (docs/protocol.md §18.5) on both backends: registrations and their cap,
the client's one secret, fan-out once per event id, the backlog bound, the log's pruning,
leases shared by replicas, retries with backoff."""

from __future__ import annotations

from typing import Any

import trio

from darktower.errors import Conflict, NotFound
from darktower.global_controller.store import (
    ControllerCapacity,
    DeliveryAttempt,
    DeliveryStatus,
    NewMeeting,
    SqlStore,
    WebhookEvent,
    open_store,
)
from darktower.model import ClientId, ControllerId, MeetingId

from .conftest import FakeClock

ALICE = ClientId("client-alice")
BOB = ClientId("client-bob")
MC1 = ControllerId("mc-1")
ALL = ("meeting_created", "participant_joined")


async def _meeting(store: SqlStore, owner: ClientId = ALICE) -> MeetingId:
    await store.register_controller(MC1, "eu", "mc1", ControllerCapacity(10, 0, 100, 0))
    meeting = await store.create_meeting(NewMeeting("m", 10, owner, controller_id=MC1))
    return meeting.meeting_id


def _event(meeting_id: MeetingId, n: int, name: str = "participant_joined") -> WebhookEvent:
    return WebhookEvent(f"ev-{n}", meeting_id, name, f'{{"n":{n}}}')


async def _record(store: SqlStore, *events: WebhookEvent, max_pending: int = 1000) -> object:
    return await store.record_events(events, max_pending=max_pending, keep=1000)


async def test_registrations_share_one_secret_and_are_capped(store: SqlStore) -> None:
    first, secret = await store.create_webhook(
        ALICE, "https://a.example/1", ALL, new_secret="s1", max_per_client=2
    )
    second, again = await store.create_webhook(
        ALICE, "https://a.example/2", ("meeting_created",), new_secret="s2", max_per_client=2
    )
    assert secret == again == "s1"  # made with the first, kept
    assert first.events == ALL and second.events == ("meeting_created",)
    try:
        await store.create_webhook(ALICE, "https://x", ALL, new_secret="s3", max_per_client=2)
    except Conflict as exc:
        assert exc.details["max_webhooks"] == "2"
    else:
        raise AssertionError("a third webhook was registered")
    _, bobs = await store.create_webhook(BOB, "https://b", ALL, new_secret="b1", max_per_client=2)
    assert bobs == "b1"
    listed = {w.webhook_id for w in await store.list_webhooks(ALICE)}
    assert listed == {first.webhook_id, second.webhook_id}
    try:  # another client's webhook is not found
        await store.delete_webhook(BOB, first.webhook_id)
    except NotFound:
        pass
    else:
        raise AssertionError("deleted another client's webhook")
    await store.delete_webhook(ALICE, first.webhook_id)
    assert [w.webhook_id for w in await store.list_webhooks(ALICE)] == [second.webhook_id]


async def test_fanout_once_per_event_id_to_subscribed_webhooks(store: SqlStore) -> None:
    meeting_id = await _meeting(store)
    joined, _ = await store.create_webhook(
        ALICE, "https://a/1", ("participant_joined",), new_secret="s", max_per_client=10
    )
    created, _ = await store.create_webhook(
        ALICE, "https://a/2", ("meeting_created",), new_secret="s", max_per_client=10
    )
    await store.create_webhook(BOB, "https://b", ALL, new_secret="b", max_per_client=10)
    batch = [_event(meeting_id, 1), _event(meeting_id, 2), _event(MeetingId("nope"), 3)]
    fan = await store.record_events(batch, max_pending=1000, keep=1000)
    assert (fan.stored, fan.unknown_meeting, fan.enqueued) == (2, 1, 2)
    again = await store.record_events(batch, max_pending=1000, keep=1000)
    assert (again.stored, again.repeated, again.enqueued) == (0, 2, 0)  # a no-op
    log, truncated = await store.list_deliveries(ALICE, joined.webhook_id, limit=100)
    assert [d.event_id for d in log] == ["ev-2", "ev-1"] and not truncated  # newest first
    assert all(d.status is DeliveryStatus.PENDING and d.attempts == 0 for d in log)
    assert (await store.list_deliveries(ALICE, created.webhook_id, limit=100))[0] == []
    try:
        await store.list_deliveries(BOB, joined.webhook_id, limit=100)
    except NotFound:
        pass
    else:
        raise AssertionError("another client read the log")


async def test_backlog_bound_drops_and_log_is_pruned(store: SqlStore) -> None:
    meeting_id = await _meeting(store)
    hook, _ = await store.create_webhook(ALICE, "https://a", ALL, new_secret="s", max_per_client=1)
    events = [_event(meeting_id, n) for n in range(5)]
    fan = await store.record_events(events, max_pending=3, keep=10)
    assert (fan.enqueued, fan.dropped) == (3, 2)
    log, truncated = await store.list_deliveries(ALICE, hook.webhook_id, limit=2)
    assert truncated and len(log) == 2
    log, _ = await store.list_deliveries(ALICE, hook.webhook_id, limit=100)
    assert [d.status for d in log] == [DeliveryStatus.DROPPED] * 2 + [DeliveryStatus.PENDING] * 3
    assert log[0].error == "backlog full" and log[0].next_attempt_at is None
    # Finished deliveries beyond the newest 2 are pruned; pending ones never are.
    await store.record_events([_event(meeting_id, 9)], max_pending=3, keep=2)
    log, _ = await store.list_deliveries(ALICE, hook.webhook_id, limit=100)
    assert [d.event_id for d in log] == ["ev-9", "ev-4", "ev-2", "ev-1", "ev-0"]
    assert [d.status for d in log][:2] == [DeliveryStatus.DROPPED] * 2


async def test_claim_retry_backoff_and_failure(store: SqlStore, clock: FakeClock) -> None:
    meeting_id = await _meeting(store)
    hook, secret = await store.create_webhook(
        ALICE, "https://a", ALL, new_secret="s", max_per_client=1
    )
    await _record(store, _event(meeting_id, 1), _event(meeting_id, 2))
    claimed, _ = await store.claim_deliveries("gc-a", limit=4, lease_s=60)
    assert [(c.webhook_id, c.body, c.secret) for c in claimed] == [
        (hook.webhook_id, '{"n":1}', secret)
    ]
    # One in flight per webhook, whichever replica asks.
    assert (await store.claim_deliveries("gc-b", limit=4, lease_s=60))[0] == []
    kept: dict[str, Any] = {"retry_base_s": 1.0, "max_attempts": 3}
    failed = DeliveryAttempt(500, "HTTP 500")
    assert await store.finish_delivery(claimed[0], "gc-a", failed, **kept) is DeliveryStatus.PENDING
    # Released: the other pending one is due now, the retried one in 1 s.
    claimed, next_due = await store.claim_deliveries("gc-b", limit=4, lease_s=60)
    assert [c.body for c in claimed] == ['{"n":2}']
    ok = DeliveryAttempt(204)
    assert await store.finish_delivery(claimed[0], "gc-b", ok, **kept) is DeliveryStatus.DELIVERED
    claimed, next_due = await store.claim_deliveries("gc-a", limit=4, lease_s=60)
    assert claimed == [] and next_due is not None
    assert (next_due - clock.now).total_seconds() == 1.0
    clock.advance(1)
    (retry,), _ = await store.claim_deliveries("gc-a", limit=4, lease_s=60)
    assert retry.attempts == 1
    await store.finish_delivery(retry, "gc-a", DeliveryAttempt(None, "timeout"), **kept)
    clock.advance(1.5)
    assert (await store.claim_deliveries("gc-a", limit=4, lease_s=60))[0] == []  # 2 s now
    clock.advance(0.5)
    (retry,), _ = await store.claim_deliveries("gc-a", limit=4, lease_s=60)
    assert await store.finish_delivery(retry, "gc-a", failed, **kept) is DeliveryStatus.FAILED
    log, _ = await store.list_deliveries(ALICE, hook.webhook_id, limit=100)
    assert [(d.status, d.attempts, d.response_status) for d in log] == [
        (DeliveryStatus.DELIVERED, 1, 204),
        (DeliveryStatus.FAILED, 3, 500),
    ]
    assert log[0].delivered_at == log[0].created_at and log[1].next_attempt_at is None
    assert (await store.claim_deliveries("gc-a", limit=4, lease_s=60)) == ([], None)


async def test_a_dead_replicas_lease_expires(store: SqlStore, clock: FakeClock) -> None:
    meeting_id = await _meeting(store)
    await store.create_webhook(ALICE, "https://a", ALL, new_secret="s", max_per_client=1)
    await _record(store, _event(meeting_id, 1))
    assert len((await store.claim_deliveries("gc-a", limit=4, lease_s=60))[0]) == 1
    clock.advance(59)
    assert (await store.claim_deliveries("gc-b", limit=4, lease_s=60))[0] == []
    clock.advance(2)
    (again,), _ = await store.claim_deliveries("gc-b", limit=4, lease_s=60)
    assert again.attempts == 0  # sent again: at least once


async def test_replicas_claim_each_webhook_once(store_url: str, clock: FakeClock) -> None:
    async with (
        await open_store(store_url, clock=clock) as a,
        await open_store(store_url, clock=clock) as b,
    ):
        meeting_id = await _meeting(a)
        for n in range(6):
            await a.create_webhook(ALICE, f"https://a/{n}", ALL, new_secret="s", max_per_client=10)
        await _record(a, *(_event(meeting_id, n) for n in range(3)))
        got: list[str] = []

        async def claim(store: SqlStore, owner: str) -> None:
            claimed, _ = await store.claim_deliveries(owner, limit=4, lease_s=60)
            got.extend(c.webhook_id for c in claimed)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(claim, a, "gc-a")
            nursery.start_soon(claim, b, "gc-b")
        assert len(got) == len(set(got))  # no webhook twice
        await claim(a, "gc-a")  # what the race left
        await claim(b, "gc-b")
        assert len(got) == len(set(got)) == 6


async def test_removing_a_client_removes_its_webhooks(store: SqlStore) -> None:
    from darktower.global_controller.store import ClientRecord

    await store.add_client(ClientRecord(ALICE, "alice", "h", FakeClock().now))
    await store.create_webhook(ALICE, "https://a", ALL, new_secret="s", max_per_client=1)
    await store.remove_client(ALICE)
    assert await store.list_webhooks(ALICE) == []
    _, secret = await store.create_webhook(
        ALICE, "https://a", ALL, new_secret="t", max_per_client=1
    )
    assert secret == "t"


async def test_a_controller_reports_only_for_meetings_it_holds_or_held(store: SqlStore) -> None:
    from darktower.global_controller.store import MeetingStatus

    meeting_id = await _meeting(store)
    for mc in ("mc-2", "mc-3"):
        await store.register_controller(
            ControllerId(mc), "eu", mc, ControllerCapacity(10, 0, 100, 0)
        )
    await store.create_webhook(ALICE, "https://a/1", ALL, new_secret="s", max_per_client=10)

    async def report(mc: str, n: int) -> Any:
        return await store.record_events(
            [_event(meeting_id, n)], max_pending=1000, keep=1000, controller_id=mc
        )

    assert (await report("mc-2", 1)).foreign == 1  # not its meeting
    assert (await report("mc-1", 2)).enqueued == 1
    moved = await store.move_meeting(
        meeting_id,
        (MC1, MeetingStatus.ACTIVE),
        (ControllerId("mc-2"), MeetingStatus.ACTIVE),
    )
    assert moved is not None and moved.controller_id == "mc-2"
    assert (await report("mc-2", 3)).enqueued == 1  # its meeting now
    assert (await report("mc-1", 4)).enqueued == 1  # held it: its late events count
    assert (await report("mc-3", 5)).foreign == 1
    # The GC's own events (no controller) are anyone's meeting's.
    assert (await _record(store, _event(meeting_id, 6))).enqueued == 1  # type: ignore[attr-defined]
