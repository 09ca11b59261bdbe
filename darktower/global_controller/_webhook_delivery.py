"""The GC's webhook delivery task (docs/protocol.md §18.5, docs/architecture.md §8).

It claims due deliveries from the store (leasing each one's webhook, so replicas sharing a
database never send one webhook's deliveries at once), sends them -- at most
:data:`MAX_DELIVERIES_IN_FLIGHT` at a time in this process, one per webhook -- each attempt
bounded by :data:`DELIVERY_TIMEOUT_S`, and records the outcome: delivered on a 2xx, else
tried again after ``retry_base_s · 2^(attempts-1)`` (at most :data:`MAX_RETRY_DELAY_S`) until
``max_attempts``, then failed. It sleeps until the next delivery is due, a new one is queued
by this process, or :data:`DELIVERY_POLL_S` (another replica's).
"""

from __future__ import annotations

import logging
import ssl
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime

import trio

from darktower.global_controller._webhook_http import post
from darktower.global_controller._webhook_limits import (
    DELIVERY_LEASE_S,
    DELIVERY_POLL_S,
    DELIVERY_TIMEOUT_S,
    MAX_DELIVERIES_IN_FLIGHT,
)
from darktower.global_controller.store import (
    ClaimedDelivery,
    DeliveryAttempt,
    DeliveryStatus,
    Store,
)
from darktower.global_controller.webhooks import SIGNATURE_HEADER, Webhooks, signature
from darktower.logs import fields

log = logging.getLogger("darktower.gc.webhooks")

Post = Callable[..., Awaitable[DeliveryAttempt]]
# After a round that claimed nothing, the task waits at least this long (seconds): a store
# that says something is due but gives nothing never makes it spin.
IDLE_FLOOR_S = 0.01


class DeliveryTask:
    """Sends the webhooks' deliveries. Owns its attempts' tasks (in :meth:`run`'s nursery);
    cancelling :meth:`run` cancels them, and a delivery cut off is sent again once its
    lease ends (at least once). ``clock`` is the GC's (unix seconds)."""

    def __init__(
        self,
        webhooks: Webhooks,
        store: Store,
        *,
        clock: Callable[[], float],
        retry_base_s: float,
        max_attempts: int,
        allow_private: bool,
        ssl_context: ssl.SSLContext | None = None,
        send: Post = post,
    ) -> None:
        self.webhooks = webhooks
        self.store = store
        self.clock = clock
        self.retry_base_s = retry_base_s
        self.max_attempts = max_attempts
        self.allow_private = allow_private
        # Built once: making a context loads the system's CAs (tens of ms, blocking the loop).
        self.ssl_context = ssl_context or ssl.create_default_context()
        self._send = send
        self.owner = f"gc-{uuid.uuid4()}"  # this process, as the leases name it
        self.in_flight: set[str] = set()  # delivery ids
        self.finished: dict[DeliveryStatus, int] = {s: 0 for s in DeliveryStatus}

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Deliver until cancelled; a failing store is logged and tried again at the next
        round."""
        async with trio.open_nursery() as nursery:
            task_status.started()
            while True:
                claimed: Sequence[ClaimedDelivery] = ()
                next_due: datetime | None = None
                room = MAX_DELIVERIES_IN_FLIGHT - len(self.in_flight)
                try:
                    claimed, next_due = await self.store.claim_deliveries(
                        self.owner, limit=room, lease_s=DELIVERY_LEASE_S
                    )
                except Exception as exc:  # the task outlives a store that fails for a while
                    log.error("webhook deliveries not claimed", extra=fields(error=repr(exc)))
                for delivery in claimed:
                    self.in_flight.add(delivery.delivery_id)
                    nursery.start_soon(self._attempt, delivery)
                wait = DELIVERY_POLL_S
                if next_due is not None and len(self.in_flight) < MAX_DELIVERIES_IN_FLIGHT:
                    wait = min(wait, max(0.0, next_due.timestamp() - self.clock()))
                if not claimed:
                    wait = max(wait, IDLE_FLOOR_S)
                with trio.move_on_after(wait):
                    await self.webhooks.wait_for_work()

    async def _attempt(self, delivery: ClaimedDelivery) -> None:
        body = delivery.body.encode()
        headers = [
            ("X-DarkTower-Event", delivery.event),
            ("X-DarkTower-Delivery", delivery.delivery_id),
            (SIGNATURE_HEADER, signature(delivery.secret, int(self.clock()), body)),
        ]
        try:
            attempt = DeliveryAttempt(None, f"timeout: no answer within {DELIVERY_TIMEOUT_S:g} s")
            with trio.move_on_after(DELIVERY_TIMEOUT_S):
                try:
                    attempt = await self._send(
                        delivery.url,
                        headers,
                        body,
                        allow_private=self.allow_private,
                        ssl_context=self.ssl_context,
                    )
                except Exception as exc:  # one delivery's failure never ends the task
                    log.error(
                        "webhook attempt failed unexpectedly",
                        extra=fields(delivery=delivery.delivery_id, error=repr(exc)),
                    )
                    attempt = DeliveryAttempt(None, f"attempt failed: {type(exc).__name__}")
            try:
                status = await self.store.finish_delivery(
                    delivery,
                    self.owner,
                    attempt,
                    retry_base_s=self.retry_base_s,
                    max_attempts=self.max_attempts,
                )
            except Exception as exc:  # the lease ends on its own: sent again then
                log.error(
                    "webhook delivery outcome not recorded",
                    extra=fields(delivery=delivery.delivery_id, error=repr(exc)),
                )
                return
            if status is not None:
                self.finished[status] += 1
            if status is DeliveryStatus.FAILED:
                log.warning(
                    "webhook delivery failed",
                    extra=fields(
                        webhook=delivery.webhook_id,
                        delivery=delivery.delivery_id,
                        error=attempt.error,
                    ),
                )
        finally:
            self.in_flight.discard(delivery.delivery_id)
            self.webhooks.attempt_finished()  # wakes the task: room for another
