"""The GC's webhooks (docs/protocol.md §18.5): registrations, events and their signed bodies.

:class:`Webhooks` turns events into deliveries in the store -- the GC's own
``meeting_created`` and the MCs' ``ReportEvents`` -- in the transaction that keeps the event,
and wakes the delivery task (``_webhook_delivery.py``), which sends them. It owns no task:
every method is one request's work, so a slow receiver never slows a request or a report.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import secrets
import urllib.parse
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import trio

from darktower.errors import InvalidRequest
from darktower.global_controller._webhook_limits import (
    KEPT_DELIVERIES_PER_WEBHOOK,
    MAX_DELIVERIES_LISTED,
    MAX_EVENT_ID_LENGTH,
    MAX_EVENT_TEXT,
    MAX_EVENTS_PER_BATCH,
    MAX_PENDING_PER_WEBHOOK,
    MAX_WEBHOOK_URL_LENGTH,
    MAX_WEBHOOKS_PER_CLIENT,
)
from darktower.global_controller.store import (
    DeliveryRecord,
    Fanout,
    MeetingRecord,
    Store,
    WebhookEvent,
    WebhookRecord,
)
from darktower.logs import fields
from darktower.model import ClientId, MeetingId
from darktower.protocol.pb.v1 import common_pb2 as common_pb
from darktower.protocol.pb.v1 import registry_pb2 as pb

log = logging.getLogger("darktower.gc.webhooks")

# Every event name, in the order of docs/protocol.md §18.5.
EVENT_NAMES: tuple[str, ...] = (
    "meeting_created",
    "meeting_started",
    "meeting_ended",
    "participant_joined",
    "participant_left",
    "stream_published",
    "stream_unpublished",
    "recording_finished",
)
SECRET_PREFIX = "whsec_"
SIGNATURE_HEADER = "X-DarkTower-Signature"


def new_secret() -> str:
    """A client's signing secret: ``whsec_`` and 32 random bytes, base64url."""
    raw = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode("ascii")
    return SECRET_PREFIX + raw


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The ``X-DarkTower-Signature`` value: ``t=<unix>,v1=<hex HMAC-SHA256(secret,
    "<t>." + body)>``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def iso_seconds(ts: datetime) -> str:
    return ts.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def event_body(
    event_id: str, event: str, created_at: datetime, meeting_id: str, data: dict[str, Any]
) -> str:
    """The JSON body posted (ASCII: the bytes signed are the text's)."""
    return json.dumps(
        {
            "event_id": event_id,
            "event": event,
            "created_at": iso_seconds(created_at),
            "meeting_id": meeting_id,
            "data": data,
        },
        separators=(",", ":"),
    )


class SkippedEvent(ValueError):
    """An event reported that cannot be a webhook's (malformed): skipped, not refused."""


def _text(value: str, what: str, *, is_id: bool = False) -> str:
    bound = MAX_EVENT_ID_LENGTH if is_id else MAX_EVENT_TEXT
    if len(value) > bound or (is_id and not value):
        raise SkippedEvent(f"{what} must be {'1' if is_id else '0'} to {bound} characters")
    return value


def _enum(kind: Any, value: int, what: str) -> str:
    try:
        return str(kind.Name(value))
    except ValueError:
        raise SkippedEvent(f"unknown {what} {value}") from None


def _participant(p: pb.ParticipantEvent, *, left: bool) -> dict[str, Any]:
    data: dict[str, Any] = {
        "participant_id": _text(p.participant_id, "participant_id", is_id=True),
        "name": _text(p.name, "name"),
        "host": p.host,
    }
    if left:
        data["reason"] = _enum(common_pb.LeaveReason, p.reason, "leave reason")
    return data


def _stream(s: pb.StreamEvent) -> dict[str, Any]:
    return {
        "participant_id": _text(s.participant_id, "participant_id", is_id=True),
        "stream_id": _text(s.stream.stream_id, "stream_id", is_id=True),
        "stream_type": _enum(common_pb.StreamType, s.stream.stream_type, "stream type"),
    }


def event_data(event: pb.MeetingEvent) -> tuple[str, dict[str, Any]]:
    """The event's name and its ``data`` (docs/protocol.md §18.5); ``SkippedEvent`` for an
    event without a kind (a newer MC's), or with a field out of bounds."""
    kind = event.WhichOneof("kind")
    if kind == "meeting_started":
        return kind, {}
    if kind == "meeting_ended":
        return kind, {"reason": _text(event.meeting_ended.reason, "reason")}
    if kind == "participant_joined":
        return kind, _participant(event.participant_joined, left=False)
    if kind == "participant_left":
        return kind, _participant(event.participant_left, left=True)
    if kind == "stream_published":
        return kind, _stream(event.stream_published)
    if kind == "stream_unpublished":
        return kind, _stream(event.stream_unpublished)
    if kind == "recording_finished":
        done = event.recording_finished
        return kind, {
            "recording_id": _text(done.recording_id, "recording_id", is_id=True),
            "participant_id": _text(done.participant_id, "participant_id", is_id=True),
            "reason": _enum(common_pb.LeaveReason, done.reason, "leave reason"),
        }
    raise SkippedEvent(f"event of an unknown kind {kind!r}")


def reported_event(event: pb.MeetingEvent, now: float) -> WebhookEvent:
    """An MC's event as the store keeps it; ``SkippedEvent`` if it cannot be one."""
    event_id = _text(event.event_id, "event_id", is_id=True)
    meeting_id = _text(event.meeting_id, "meeting_id", is_id=True)
    name, data = event_data(event)
    at = event.occurred_at / 1_000_000 if event.occurred_at else now
    try:
        created = datetime.fromtimestamp(at, UTC)
    except (OverflowError, OSError, ValueError):
        raise SkippedEvent(f"occurred_at {event.occurred_at} is not a time") from None
    body = event_body(event_id, name, created, meeting_id, data)
    return WebhookEvent(event_id, MeetingId(meeting_id), name, body)


def check_url(url: object) -> str:
    """A webhook's URL: http:// or https://, with a host, at most 2,048 characters."""
    if not isinstance(url, str) or not url:
        raise InvalidRequest("url must be an http:// or https:// URL")
    if len(url) > MAX_WEBHOOK_URL_LENGTH:
        raise InvalidRequest(f"url must be at most {MAX_WEBHOOK_URL_LENGTH} characters")
    if not url.isascii() or not url.isprintable() or " " in url:
        raise InvalidRequest("url must be printable ASCII without spaces")
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 -- raises ValueError for a bad port
    except ValueError as exc:
        raise InvalidRequest(f"url is not a URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise InvalidRequest("url must be an http:// or https:// URL")
    if not parts.hostname:
        raise InvalidRequest("url must name a host")
    try:  # a name the resolver cannot take (a label empty or over 63 characters) is refused
        labels = parts.hostname.removesuffix(".").split(".")
        parts.hostname.encode("idna")
    except UnicodeError:
        labels = [""]
    if not all(labels):
        raise InvalidRequest("url's host is not a valid name (a label empty or too long)")
    if parts.username is not None or parts.password is not None:
        raise InvalidRequest("url must not carry credentials")
    if parts.fragment:
        raise InvalidRequest("url must not have a fragment")
    return url


def check_events(events: object) -> tuple[str, ...]:
    """The event names asked for (absent: all), each a known one, at least one."""
    if events is None:
        return EVENT_NAMES
    if not isinstance(events, list) or not events:
        raise InvalidRequest("events must be a non-empty list of event names")
    if len(events) > len(EVENT_NAMES) * 2:
        raise InvalidRequest("events lists too many names")
    for name in events:
        if name not in EVENT_NAMES:
            shown = str(name)[:40]
            raise InvalidRequest(
                f"unknown event {shown!r}: one of {', '.join(EVENT_NAMES)}",
                details={"event": shown},
            )
    return tuple(sorted(set(events), key=EVENT_NAMES.index))


def _webhook_json(webhook: WebhookRecord) -> dict[str, Any]:
    return {
        "webhook_id": webhook.webhook_id,
        "url": webhook.url,
        "events": sorted(webhook.events, key=EVENT_NAMES.index),
        "created_at": iso_seconds(webhook.created_at),
    }


def _delivery_json(d: DeliveryRecord) -> dict[str, Any]:
    return {
        "delivery_id": d.delivery_id,
        "event_id": d.event_id,
        "event": d.event,
        "status": d.status.value,
        "attempts": d.attempts,
        "response_status": d.response_status,
        "error": d.error,
        "created_at": iso_seconds(d.created_at),
        "next_attempt_at": None if d.next_attempt_at is None else iso_seconds(d.next_attempt_at),
        "delivered_at": None if d.delivered_at is None else iso_seconds(d.delivered_at),
    }


class Webhooks:
    """The GC's webhooks over its store. Owns no task; :meth:`wait_for_work` is the delivery
    task's wake-up (set whenever this process queues a delivery)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._work = trio.Event()
        self.skipped = 0  # reported events skipped as malformed (logged)
        self.attempts = 0  # attempts this process has finished (sent or not)
        self._attempted = trio.Event()

    # -- events -----------------------------------------------------------------------------
    async def record(
        self, events: Sequence[WebhookEvent], controller_id: str | None = None
    ) -> Fanout:
        """Keep the events and queue their deliveries (one transaction); wake the task.
        ``controller_id``: the MC that reported them (its events count only for meetings it
        holds or held); None for the GC's own."""
        fan = await self.store.record_events(
            events,
            max_pending=MAX_PENDING_PER_WEBHOOK,
            keep=KEPT_DELIVERIES_PER_WEBHOOK,
            controller_id=controller_id,
        )
        if fan.enqueued:
            self._work.set()
        if fan.dropped:
            log.warning(
                "webhook backlog full: deliveries dropped", extra=fields(dropped=fan.dropped)
            )
        return fan

    async def meeting_created(self, meeting: MeetingRecord, event_id: str) -> Fanout:
        body = event_body(
            event_id,
            "meeting_created",
            meeting.created_at,
            meeting.meeting_id,
            {"display_name": meeting.display_name},
        )
        return await self.record(
            [WebhookEvent(event_id, meeting.meeting_id, "meeting_created", body)]
        )

    async def report(
        self, controller_id: str, events: Sequence[pb.MeetingEvent], now: float
    ) -> Fanout:
        """An MC's batch: ``InvalidRequest`` beyond :data:`MAX_EVENTS_PER_BATCH`; a malformed
        event is skipped and logged (refusing the batch would have the MC send it again and
        again, holding back the good ones)."""
        if len(events) > MAX_EVENTS_PER_BATCH:
            raise InvalidRequest(f"more than {MAX_EVENTS_PER_BATCH} events in one report")
        kept: list[WebhookEvent] = []
        for event in events:
            if event.WhichOneof("kind") == "participant_moderated":
                continue  # not a webhook's: a host's blocks, kept by the registry
            try:
                kept.append(reported_event(event, now))
            except SkippedEvent as exc:
                self.skipped += 1
                log.warning(
                    "reported event skipped",
                    extra=fields(controller=controller_id, error=str(exc)),
                )
        if not kept:
            return Fanout()
        return await self.record(kept, controller_id)

    async def wait_for_work(self) -> None:
        """Return once a delivery was queued by this process since the last call returned."""
        await self._work.wait()
        self._work = trio.Event()

    def attempt_finished(self) -> None:
        """The delivery task finished an attempt: there is room for another, and the webhook
        may have more due."""
        self.attempts += 1
        self._attempted.set()
        self._attempted = trio.Event()
        self._work.set()

    async def wait_attempts(self, count: int) -> None:
        """Return once this process has finished ``count`` attempts in all."""
        while self.attempts < count:
            await self._attempted.wait()

    # -- registrations (REST) ---------------------------------------------------------------
    async def create(self, client_id: ClientId, url: str, events: Iterable[str]) -> dict[str, Any]:
        webhook, secret = await self.store.create_webhook(
            client_id,
            url,
            tuple(events),
            new_secret=new_secret(),
            max_per_client=MAX_WEBHOOKS_PER_CLIENT,
        )
        log.info(
            "webhook registered",
            extra=fields(client=client_id, webhook=webhook.webhook_id, events=len(webhook.events)),
        )
        return {**_webhook_json(webhook), "secret": secret}

    async def listing(self, client_id: ClientId) -> dict[str, Any]:
        return {"webhooks": [_webhook_json(w) for w in await self.store.list_webhooks(client_id)]}

    async def delete(self, client_id: ClientId, webhook_id: str) -> None:
        await self.store.delete_webhook(client_id, webhook_id)

    async def deliveries(self, client_id: ClientId, webhook_id: str, limit: int) -> dict[str, Any]:
        if not 1 <= limit <= MAX_DELIVERIES_LISTED:
            raise InvalidRequest(f"limit must be 1 to {MAX_DELIVERIES_LISTED}")
        rows, truncated = await self.store.list_deliveries(client_id, webhook_id, limit=limit)
        return {"deliveries": [_delivery_json(d) for d in rows], "truncated": truncated}
