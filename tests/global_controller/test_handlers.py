"""The REST handlers called alone, without the HTTP app: a request in, a reply or a wire error
out (the app turns either into the contract's JSON body)."""

from __future__ import annotations

import json
import pathlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

import attrs
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from darktower.errors import InvalidRequest, NotFound, Unauthorized
from darktower.global_controller import (
    ApiRequest,
    GcMetrics,
    GlobalController,
    RestHandlers,
    Tokens,
)
from darktower.global_controller.store import (
    ControllerCapacity,
    ControllerRecord,
    IssuedJoinToken,
    MeetingRecord,
    open_store,
)
from darktower.metrics import Registry
from darktower.model import ClientId, ControllerId, MeetingId, ParticipantId
from darktower.protocol.tokens import (
    AccessClaims,
    AccessTokenIssuer,
    AccessTokenVerifier,
    JoinTokenIssuer,
)

SIGNALING_URL = "https://127.0.0.1:4433/v1/signal"
MISSING = "00000000-0000-4000-8000-000000000000"


class AcceptingControllers:
    """The MC seam: every meeting is accepted and remembered."""

    def __init__(self) -> None:
        self.assigned: list[MeetingId] = []

    async def assign_meeting(self, controller: ControllerRecord, meeting: MeetingRecord) -> None:
        self.assigned.append(meeting.meeting_id)

    async def end_meeting(
        self, controller: ControllerRecord, meeting_id: MeetingId, reason: str = "ended"
    ) -> None:
        pass

    async def kick(
        self,
        controller: ControllerRecord,
        meeting_id: MeetingId,
        participant_id: ParticipantId,
        revoked: Sequence[IssuedJoinToken] = (),
    ) -> str:
        raise NotFound(f"participant {participant_id} is not in the meeting")


@attrs.frozen
class Rig:
    handlers: RestHandlers
    controllers: AcceptingControllers
    alice: AccessClaims
    metrics: GcMetrics


@pytest.fixture
async def rig(tmp_path: pathlib.Path) -> AsyncIterator[Rig]:
    access = Ed25519PrivateKey.generate()
    tokens = Tokens(
        join=JoinTokenIssuer(Ed25519PrivateKey.generate()),
        access=AccessTokenIssuer(access),
        access_verifier=AccessTokenVerifier(access.public_key()),
    )
    controllers = AcceptingControllers()
    async with await open_store(f"sqlite:///{tmp_path / 'gc.db'}") as store:
        await store.register_controller(
            ControllerId("mc-1"),
            "local",
            f"127.0.0.1:1 {SIGNALING_URL}",
            ControllerCapacity(max_meetings=10, max_participants=100),
        )
        gc = GlobalController(
            store,
            tokens,
            controllers,
            public_url="https://gc.example/",
            heartbeat_timeout_s=15.0,
        )
        alice = tokens.access_verifier.verify(
            tokens.access.issue(ClientId("alice"), ("meetings",), gc.now()), now=gc.now()
        )
        metrics = GcMetrics(Registry())
        yield Rig(RestHandlers(gc, metrics=metrics), controllers, alice, metrics)


def _body(value: Any) -> bytes:
    return json.dumps(value).encode()


async def test_create_meeting_then_read_it(rig: Rig) -> None:
    created = await rig.handlers.create_meeting(
        ApiRequest(caller=rig.alice, body=_body({"display_name": "standup"}))
    )
    assert created.status == 201
    assert created.body is not None
    meeting_id = created.body["meeting_id"]
    assert rig.controllers.assigned == [meeting_id]
    assert created.body["meeting_url"] == f"https://gc.example/m/{meeting_id}"
    assert created.body["meeting_controller_url"] == SIGNALING_URL
    assert created.body["join_token"]
    assert "darktower_gc_meetings_created_total 1" in rig.metrics.registry.render()

    info = await rig.handlers.get_meeting(ApiRequest(), meeting_id)
    assert info.status == 200
    assert info.body is not None
    assert info.body["display_name"] == "standup"
    assert info.body["status"] == "active"
    assert info.body["meeting_controller_region"] == "local"


async def test_an_unknown_meeting_is_not_found(rig: Rig) -> None:
    with pytest.raises(NotFound, match=MISSING):
        await rig.handlers.get_meeting(ApiRequest(), MISSING)
    with pytest.raises(NotFound, match="does not exist"):  # too long to be an id: no lookup
        await rig.handlers.get_meeting(ApiRequest(), "x" * 1000)


async def test_a_body_that_fails_validation_names_the_field(rig: Rig) -> None:
    with pytest.raises(InvalidRequest, match="'display_name' must not be empty"):
        await rig.handlers.create_meeting(
            ApiRequest(caller=rig.alice, body=_body({"display_name": " "}))
        )
    with pytest.raises(InvalidRequest, match="'active' must be 'true' or 'false'"):
        await rig.handlers.list_meetings(ApiRequest(caller=rig.alice, args={"active": "maybe"}))
    assert rig.controllers.assigned == []


async def test_creating_needs_an_access_token(rig: Rig) -> None:
    with pytest.raises(Unauthorized, match="missing Authorization"):
        await rig.handlers.create_meeting(ApiRequest(body=_body({"display_name": "m"})))
    refused = Unauthorized("token expired")
    with pytest.raises(Unauthorized, match="token expired"):
        await rig.handlers.create_meeting(
            ApiRequest(caller=refused, body=_body({"display_name": "m"}))
        )


async def test_kicking_someone_not_there_is_not_found(rig: Rig) -> None:
    created = await rig.handlers.create_meeting(
        ApiRequest(caller=rig.alice, body=_body({"display_name": "m"}))
    )
    assert created.body is not None
    with pytest.raises(NotFound, match="not in the meeting"):
        await rig.handlers.kick(ApiRequest(caller=rig.alice), created.body["meeting_id"], "p-9")
    ended = await rig.handlers.end_meeting(ApiRequest(caller=rig.alice), created.body["meeting_id"])
    assert (ended.status, ended.body) == (204, None)
