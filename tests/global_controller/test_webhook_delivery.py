"""The webhook delivery task on trio's virtual clock (autojump), over a small fake store: the
10 s bound of an attempt, at most 4 in flight, waking when a delivery is queued and at the next
due time, and the signed headers it sends."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import trio
import trio.testing

from darktower.global_controller._webhook_delivery import DeliveryTask
from darktower.global_controller._webhook_limits import (
    DELIVERY_TIMEOUT_S,
    MAX_DELIVERIES_IN_FLIGHT,
)
from darktower.global_controller.store import (
    ClaimedDelivery,
    DeliveryAttempt,
    DeliveryStatus,
    Fanout,
    WebhookEvent,
)
from darktower.global_controller.webhooks import Webhooks
from tests.global_controller.test_webhooks import verify

EPOCH = 1_767_225_600.0


class FakeStore:
    """Due deliveries in a list, each webhook leased while claimed; times are trio's clock
    (seconds since the test's start) plus EPOCH."""

    def __init__(self) -> None:
        self.due: list[tuple[float, ClaimedDelivery]] = []
        self.leased: set[str] = set()
        self.finished: list[tuple[ClaimedDelivery, DeliveryAttempt]] = []

    def add(self, n: int, at: float = 0.0, webhook: str = "") -> None:
        self.due.append(
            (
                at,
                ClaimedDelivery(
                    f"d{n}", webhook or f"w{n}", "meeting_started", f'{{"n":{n}}}', 0, "u", "s"
                ),
            )
        )

    async def record_events(self, events: Sequence[WebhookEvent], **_: Any) -> Fanout:
        await trio.lowlevel.checkpoint()
        for n, _event in enumerate(events):
            self.add(100 + n, trio.current_time())
        return Fanout(stored=len(events), enqueued=len(events))

    async def claim_deliveries(
        self, owner: str, *, limit: int, lease_s: float
    ) -> tuple[list[ClaimedDelivery], datetime | None]:
        await trio.lowlevel.checkpoint()
        now = trio.current_time()
        claimed: list[ClaimedDelivery] = []
        for at, delivery in sorted(self.due, key=lambda d: d[0]):
            if len(claimed) < limit and at <= now and delivery.webhook_id not in self.leased:
                self.leased.add(delivery.webhook_id)
                claimed.append(delivery)
        waiting = [at for at, d in self.due if d.webhook_id not in self.leased]
        next_due = None if not waiting else datetime.fromtimestamp(EPOCH + min(waiting), UTC)
        return claimed, next_due

    async def finish_delivery(
        self, claimed: ClaimedDelivery, owner: str, attempt: DeliveryAttempt, **_: Any
    ) -> DeliveryStatus:
        await trio.lowlevel.checkpoint()
        self.leased.discard(claimed.webhook_id)
        self.finished.append((claimed, attempt))
        self.due = [(at, d) for at, d in self.due if d.delivery_id != claimed.delivery_id]
        if attempt.delivered:
            return DeliveryStatus.DELIVERED
        return DeliveryStatus.FAILED


def _task(store: FakeStore, send: Any) -> tuple[DeliveryTask, Webhooks]:
    webhooks = Webhooks(store)  # type: ignore[arg-type]
    task = DeliveryTask(
        webhooks,
        store,  # type: ignore[arg-type]
        clock=lambda: EPOCH + trio.current_time(),
        retry_base_s=1.0,
        max_attempts=3,
        allow_private=True,
        send=send,
    )
    return task, webhooks


async def test_a_hanging_receiver_is_cut_at_10_s_and_4_run_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = FakeStore()
    for n in range(6):
        store.add(n)
    most = 0
    sent: list[tuple[str, Sequence[tuple[str, str]], bytes]] = []

    async def hang(url: str, headers: Sequence[tuple[str, str]], body: bytes, **_: Any) -> Any:
        nonlocal most
        sent.append((url, headers, body))
        most = max(most, len(task.in_flight))
        await trio.sleep_forever()

    task, webhooks = _task(store, hang)
    async with trio.open_nursery() as nursery:
        await nursery.start(task.run)
        await webhooks.wait_attempts(6)
        nursery.cancel_scope.cancel()
    assert most == MAX_DELIVERIES_IN_FLIGHT
    assert trio.current_time() == 2 * DELIVERY_TIMEOUT_S  # 4, then the last 2
    assert {a.error for _, a in store.finished} == {"timeout: no answer within 10 s"}
    (named, body), *_ = [
        (dict(h), b) for _, h, b in sent if dict(h)["X-DarkTower-Delivery"] == "d0"
    ]
    assert named["X-DarkTower-Event"] == "meeting_started"
    signed = named["X-DarkTower-Signature"]
    assert signed.startswith(f"t={int(EPOCH)},v1=") and body == b'{"n":0}'


async def test_the_task_wakes_for_new_work_and_at_the_next_due_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = FakeStore()
    store.add(1, at=7.5)
    times: list[float] = []

    async def answer(url: str, headers: Sequence[tuple[str, str]], body: bytes, **_: Any) -> Any:
        times.append(trio.current_time())
        await trio.lowlevel.checkpoint()
        return DeliveryAttempt(204)

    task, webhooks = _task(store, answer)
    async with trio.open_nursery() as nursery:
        await nursery.start(task.run)
        await webhooks.wait_attempts(1)
        assert times == [7.5]  # slept until it was due, not a poll later
        await trio.sleep(1.25)
        await webhooks.record(
            [WebhookEvent("e", "m", "meeting_started", "{}")]  # type: ignore[arg-type]
        )
        await webhooks.wait_attempts(2)
        assert times == [7.5, 8.75]  # at once
        nursery.cancel_scope.cancel()
    assert [a.response_status for _, a in store.finished] == [204, 204]


def test_verify_snippet_refuses_the_fake_clocks_time() -> None:
    # The fake EPOCH is years from now or ago for a real receiver: the snippet refuses it.
    assert not verify("s", b"{}", f"t={int(EPOCH) - 10**6},v1=00")
    assert datetime.fromtimestamp(EPOCH, UTC) - datetime(2026, 1, 1, tzinfo=UTC) == timedelta(0)
