"""Webhooks end to end (docs/protocol.md §18.5): a real GC (real clock), a stand-in MC reporting
events over the cluster's gRPC, and a real HTTP receiver on 127.0.0.1 started by the test.
Every event is delivered with its body and a signature that the documented snippet verifies;
a receiver that fails three times gets the event on the fourth try; a dead receiver does not
slow the API; a repeated report is delivered once; a full backlog drops."""

from __future__ import annotations

import hashlib
import hmac
import json
import pathlib
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
import httpx
import trio

from darktower.errors import DarkTowerError
from darktower.global_controller import Running, Settings
from darktower.global_controller.store import DeliveryStatus
from darktower.model import ClientId
from darktower.protocol.pb.v1 import common_pb2 as common_pb
from darktower.protocol.pb.v1 import registry_pb2 as reg_pb
from darktower.protocol.pb.v1.registry_grpc import ControllerRegistryStub
from darktower.transport.rpc import call
from tests._stack import StandIn, open_services
from tests.global_controller._harness import H1Api, StandInMC, mc_channel, register_mc
from tests.global_controller._webhook_receiver import Receiver, closed_port, running_receiver

WAIT_S = 30.0  # a bound on each wait for an event, never a sleep
OCCURRED_US = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z


# The receiver's check, exactly as docs/protocol.md §18.5 gives it.
def verify(secret: str, body: bytes, header: str, tolerance_s: int = 300) -> bool:
    parts = dict(item.split("=", 1) for item in header.split(","))
    t, sent = parts["t"], parts["v1"]
    if abs(time.time() - int(t)) > tolerance_s:
        return False
    mac = hmac.new(secret.encode(), t.encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(mac, sent)


@attrs.define
class Hooks:
    gc: Running
    api: H1Api
    token: str
    client_id: str
    settings: Settings

    async def create_meeting(self, name: str = "standup") -> dict[str, Any]:
        reply = await self.api.request(
            "POST", "/api/v1/meetings", token=self.token, json_body={"display_name": name}
        )
        assert reply.status == 201, reply.body
        created: dict[str, Any] = reply.json()
        return created

    async def register(self, url: str, events: list[str] | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"url": url}
        if events is not None:
            body["events"] = events
        reply = await self.api.request("POST", "/api/v1/webhooks", token=self.token, json_body=body)
        assert reply.status == 201, reply.body
        hook: dict[str, Any] = reply.json()
        return hook

    async def log(self, webhook_id: str, limit: int = 100) -> dict[str, Any]:
        reply = await self.api.request(
            "GET", f"/api/v1/webhooks/{webhook_id}/deliveries?limit={limit}", token=self.token
        )
        assert reply.status == 200, reply.body
        listed: dict[str, Any] = reply.json()
        return listed

    async def report(self, events: list[reg_pb.MeetingEvent]) -> None:
        await report(self.gc.grpc_port, events)


async def report(grpc_port: int, events: list[reg_pb.MeetingEvent]) -> None:
    """ReportEvents as the MC "mc-1" (with its cluster certificate)."""
    error: DarkTowerError | None = None
    async with mc_channel(grpc_port, "mc-1") as channel:
        try:
            await call(
                ControllerRegistryStub(channel).ReportEvents,
                reg_pb.MeetingEventBatch(controller_id="mc-1", events=events),
                deadline_s=10,
            )
        except DarkTowerError as exc:
            error = exc
    if error is not None:
        raise error


@asynccontextmanager
async def hooks_stack(data_dir: pathlib.Path, **gc: Any) -> AsyncIterator[Hooks]:
    overrides = {"webhooks_allow_private": True, "webhook_retry_base_s": 0.05, **gc}
    async with open_services(data_dir, gc=overrides, mc=StandIn(StandInMC())) as services:
        assert services.gc is not None
        await register_mc(services.gc.grpc_port, "mc-1", services.stand_ins["mc"])
        async with httpx.AsyncClient(base_url=services.gc.url, verify=False) as client:
            api = H1Api(client)
            token = await api.token(services.client_id, services.client_secret)
            assert services.gc_settings is not None
            yield Hooks(services.gc, api, token, services.client_id, services.gc_settings)


def _event(meeting_id: str, n: int, **kind: Any) -> reg_pb.MeetingEvent:
    return reg_pb.MeetingEvent(
        event_id=f"{meeting_id}-{n}", meeting_id=meeting_id, occurred_at=OCCURRED_US, **kind
    )


def every_reported_event(meeting_id: str) -> list[reg_pb.MeetingEvent]:
    ada = reg_pb.ParticipantEvent(participant_id="p-1", name="Ada", host=True)
    left = reg_pb.ParticipantEvent(
        participant_id="p-1", name="Ada", host=True, reason=common_pb.CONNECTION_LOST
    )
    screen = reg_pb.StreamEvent(
        participant_id="p-1",
        stream=common_pb.MediaStream(stream_id="s-1", stream_type=common_pb.VIDEO_SCREEN),
    )
    done = reg_pb.RecordingFinishedEvent(
        recording_id="r-1", participant_id="p-1", reason=common_pb.KICKED
    )
    return [
        _event(meeting_id, 1, meeting_started=reg_pb.MeetingStartedEvent()),
        _event(meeting_id, 2, participant_joined=ada),
        _event(meeting_id, 3, stream_published=screen),
        _event(meeting_id, 4, stream_unpublished=screen),
        _event(meeting_id, 5, recording_finished=done),
        _event(meeting_id, 6, participant_left=left),
        _event(meeting_id, 7, meeting_ended=reg_pb.MeetingEndedEvent(reason="ended")),
    ]


STREAM = {"participant_id": "p-1", "stream_id": "s-1", "stream_type": "VIDEO_SCREEN"}
EXPECTED_DATA = [
    ("meeting_started", {}),
    ("participant_joined", {"participant_id": "p-1", "name": "Ada", "host": True}),
    ("stream_published", STREAM),
    ("stream_unpublished", STREAM),
    ("recording_finished", {"recording_id": "r-1", "participant_id": "p-1", "reason": "KICKED"}),
    (
        "participant_left",
        {"participant_id": "p-1", "name": "Ada", "host": True, "reason": "CONNECTION_LOST"},
    ),
    ("meeting_ended", {"reason": "ended"}),
]


async def _received(receiver: Receiver, count: int) -> list[Any]:
    got = []
    with trio.fail_after(WAIT_S):
        for _ in range(count):
            got.append(await receiver.next())
    return got


async def test_every_event_is_delivered_signed_and_once(tmp_path: pathlib.Path) -> None:
    async with running_receiver() as receiver, hooks_stack(tmp_path / "data") as hooks:
        hook = await hooks.register(receiver.url)
        secret = hook["secret"]
        assert secret.startswith("whsec_") and len(secret) == 6 + 43
        assert hook["events"][0] == "meeting_created" and len(hook["events"]) == 8
        meeting = await hooks.create_meeting()
        meeting_id = meeting["meeting_id"]
        batch = every_reported_event(meeting_id)
        await hooks.report(batch)
        requests = await _received(receiver, 8)

        bodies = [json.loads(r.body) for r in requests]
        assert bodies[0] == {
            "event_id": bodies[0]["event_id"],
            "event": "meeting_created",
            "created_at": meeting["created_at"],
            "meeting_id": meeting_id,
            "data": {"display_name": "standup"},
        }
        for n, (body, (name, data)) in enumerate(zip(bodies[1:], EXPECTED_DATA, strict=True)):
            assert body == {
                "event_id": f"{meeting_id}-{n + 1}",
                "event": name,
                "created_at": "2026-01-01T00:00:00Z",
                "meeting_id": meeting_id,
                "data": data,
            }
        log = await hooks.log(hook["webhook_id"])
        ids = {d["delivery_id"] for d in log["deliveries"]}
        for request, body in zip(requests, bodies, strict=True):
            assert request.target == "/hook?x=1"
            assert request.headers["content-type"] == "application/json"
            assert request.headers["x-darktower-event"] == body["event"]
            assert request.headers["x-darktower-delivery"] in ids
            assert verify(secret, request.body, request.headers["x-darktower-signature"])
            assert not verify("whsec_other", request.body, request.headers["x-darktower-signature"])
        assert [d["status"] for d in log["deliveries"]] == ["delivered"] * 8
        assert {(d["attempts"], d["response_status"], d["error"]) for d in log["deliveries"]} == {
            (1, 200, "")
        }

        # The MC sends a batch again (it never got the answer): nothing is delivered twice.
        await hooks.report(batch)
        await hooks.report([_event(meeting_id, 8, meeting_started=reg_pb.MeetingStartedEvent())])
        (late,) = await _received(receiver, 1)
        assert json.loads(late.body)["event_id"] == f"{meeting_id}-8"
        assert len((await hooks.log(hook["webhook_id"]))["deliveries"]) == 9


async def test_a_receiver_failing_three_times_gets_the_event_on_the_fourth_try(
    tmp_path: pathlib.Path,
) -> None:
    async with running_receiver() as receiver, hooks_stack(tmp_path / "data") as hooks:
        receiver.statuses = [500, 500, 503]
        hook = await hooks.register(receiver.url, ["meeting_created"])
        await hooks.create_meeting()
        tries = await _received(receiver, 4)
        assert len({t.body for t in tries}) == 1  # the same event, the same body
        assert len({t.headers["x-darktower-delivery"] for t in tries}) == 1
        for t in tries:
            assert verify(hook["secret"], t.body, t.headers["x-darktower-signature"])
        with trio.fail_after(WAIT_S):
            await hooks.gc.controller.webhooks.wait_attempts(4)
        (delivery,) = (await hooks.log(hook["webhook_id"]))["deliveries"]
        assert delivery["status"] == "delivered"
        assert (delivery["attempts"], delivery["response_status"]) == (4, 200)
        assert delivery["delivered_at"] is not None


async def test_a_dead_receiver_does_not_slow_the_api(tmp_path: pathlib.Path) -> None:
    async with running_receiver() as receiver, hooks_stack(tmp_path / "data") as hooks:
        receiver.hang = True  # takes every request and never answers
        hung = [await hooks.register(receiver.url) for _ in range(3)]
        refused = await hooks.register(f"http://127.0.0.1:{closed_port()}/")
        meeting = await hooks.create_meeting()
        await _received(receiver, 3)  # three deliveries in flight, held by the receiver
        with trio.fail_after(WAIT_S):  # and the refused one tried (and retried)
            await hooks.gc.controller.webhooks.wait_attempts(1)

        # While they hang: the API and the MCs' reports are answered all the same.
        for n in range(3):
            await hooks.create_meeting(f"more {n}")
        await hooks.report(every_reported_event(meeting["meeting_id"]))
        listed = await hooks.api.request("GET", "/api/v1/webhooks", token=hooks.token)
        assert listed.status == 200 and len(listed.json()["webhooks"]) == 4
        assert "secret" not in listed.json()["webhooks"][0]
        log = await hooks.log(hung[0]["webhook_id"])
        assert len(log["deliveries"]) == 4 + 7  # queued, one of them in flight
        assert {d["status"] for d in log["deliveries"]} == {"pending"}
        assert receiver.answered == 0  # every delivery sent was still unanswered
        refusals = (await hooks.log(refused["webhook_id"]))["deliveries"]
        first = refusals[-1]
        assert first["event"] == "meeting_created" and first["attempts"] >= 1
        assert first["error"].startswith("cannot connect") and first["response_status"] is None


async def test_a_full_backlog_drops_new_events(tmp_path: pathlib.Path) -> None:
    async with running_receiver() as receiver, hooks_stack(tmp_path / "data") as hooks:
        receiver.hang = True
        hook = await hooks.register(receiver.url, ["participant_joined"])
        meeting_id = (await hooks.create_meeting())["meeting_id"]
        who = reg_pb.ParticipantEvent(participant_id="p-1", name="Ada")
        for batch in range(3):
            await hooks.report(
                [_event(meeting_id, batch * 500 + n, participant_joined=who) for n in range(500)]
            )
        log = await hooks.log(hook["webhook_id"], limit=100)
        assert log["truncated"] and len(log["deliveries"]) == 100
        assert {(d["status"], d["error"]) for d in log["deliveries"]} == {
            ("dropped", "backlog full")
        }
        store = hooks.gc.controller.store
        everything, more = await store.list_deliveries(
            ClientId(hooks.client_id), hook["webhook_id"], limit=2000
        )
        assert not more and len(everything) == 1500
        statuses = [d.status for d in everything]
        assert statuses.count(DeliveryStatus.PENDING) == 1000
        assert statuses.count(DeliveryStatus.DROPPED) == 500
        assert statuses[:500] == [DeliveryStatus.DROPPED] * 500  # the newest


async def test_private_addresses_are_refused_unless_allowed(tmp_path: pathlib.Path) -> None:
    async with (
        running_receiver() as receiver,
        hooks_stack(tmp_path / "data", webhooks_allow_private=False) as hooks,
    ):
        hook = await hooks.register(receiver.url, ["meeting_created"])
        await hooks.create_meeting()
        with trio.fail_after(WAIT_S):
            await hooks.gc.controller.webhooks.wait_attempts(1)
        (delivery,) = (await hooks.log(hook["webhook_id"]))["deliveries"]
        assert delivery["error"] == "address not allowed" and delivery["attempts"] >= 1
        assert receiver.requests == []
