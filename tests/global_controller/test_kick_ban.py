"""A kick with ``?ban=`` keeps the kicked identity from getting a new join token for the
meeting (403 FORBIDDEN) for the ban's time; the host is never banned; replicas agree (the ban
is in the store). The MC seam reports which join token the kicked session used."""

from __future__ import annotations

import pathlib
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

from darktower.errors import NotFound
from darktower.global_controller import Running, serve, service, token_id
from darktower.global_controller.clients import add_client
from darktower.global_controller.store import ControllerRecord, IssuedJoinToken, MeetingRecord
from darktower.model import MeetingId, ParticipantId
from tests.global_controller._harness import ManualClock, gc_settings, open_api, register_mc


class JoinedControllers:
    """An in-process MC seam: participants "join" with a token; kick reports its jti."""

    def __init__(self) -> None:
        self.sessions: dict[str, str] = {}  # participant id -> join token id
        self.revoked: list[list[str]] = []  # the token ids of each kick that revoked some

    async def assign_meeting(self, controller: ControllerRecord, meeting: MeetingRecord) -> None:
        pass

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
        if revoked:
            self.revoked.append([t.token_id for t in revoked])
        if participant_id not in self.sessions:
            raise NotFound(f"participant {participant_id} is not in the meeting")
        return self.sessions.pop(participant_id)


@asynccontextmanager
async def _gc(
    tmp_path: pathlib.Path, mcs: JoinedControllers, clock: ManualClock
) -> AsyncIterator[tuple[Running, str, str]]:
    settings = gc_settings(tmp_path / "data", kick_ban_s=600.0)
    client_id, secret = await add_client(settings, "alice")
    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        running: Running = await nursery.start(
            lambda task_status: serve(
                settings, shutdown=shutdown, task_status=task_status, clock=clock, controllers=mcs
            )
        )
        await register_mc(running.grpc_port, "mc-1", "127.0.0.1:1")
        try:
            yield running, client_id, secret
        finally:
            shutdown.set()


async def test_a_kick_with_ban_keeps_that_identity_out(tmp_path: pathlib.Path) -> None:
    mcs, clock = JoinedControllers(), ManualClock()
    async with _gc(tmp_path, mcs, clock) as (running, client_id, secret):
        async with open_api("h1", running.url, running.certificate_sha256) as api:
            owner = await api.token(client_id, secret)
            created = await api.request(
                "POST", "/api/v1/meetings", json_body={"display_name": "m"}, token=owner
            )
            meeting = created.json()["meeting_id"]
            join = f"/api/v1/meetings/{meeting}/join"

            async def joins(participant: str, **kwargs: Any) -> Any:
                reply = await api.request(
                    "POST", join, json_body={"participant_name": "Troll"}, **kwargs
                )
                if reply.status == 200:
                    mcs.sessions[participant] = token_id(reply.json()["join_token"])
                return reply

            assert (await joins("p-1")).status == 200
            kick = f"/api/v1/meetings/{meeting}/participants/p-1"
            bad = await api.request("DELETE", kick + "?ban=forever", token=owner)
            assert (bad.status, bad.error_code) == (400, "INVALID_REQUEST")
            assert (await api.request("DELETE", kick + "?ban=true", token=owner)).status == 204

            refused = await joins("p-2")
            assert (refused.status, refused.error_code) == (403, "FORBIDDEN"), refused.body
            assert "removed from meeting" in refused.json()["error"]["message"]
            assert "banned_until" in refused.json()["error"]["details"]
            # The host (the owner's client) is never banned from its own meeting.
            assert (await joins("host", token=owner)).status == 200
            clock.advance(601)  # kick_ban_s
            assert (await joins("p-3")).status == 200


async def test_a_kick_without_ban_lets_them_back(tmp_path: pathlib.Path) -> None:
    mcs, clock = JoinedControllers(), ManualClock()
    async with _gc(tmp_path, mcs, clock) as (running, client_id, secret):
        async with open_api("h1", running.url, running.certificate_sha256) as api:
            owner = await api.token(client_id, secret)
            meeting = (
                await api.request(
                    "POST", "/api/v1/meetings", json_body={"display_name": "m"}, token=owner
                )
            ).json()["meeting_id"]
            reply = await api.request("POST", f"/api/v1/meetings/{meeting}/join")
            mcs.sessions["p-1"] = token_id(reply.json()["join_token"])
            kick = f"/api/v1/meetings/{meeting}/participants/p-1"
            assert (await api.request("DELETE", kick, token=owner)).status == 204
            assert (await api.request("POST", f"/api/v1/meetings/{meeting}/join")).status == 200


async def test_a_kick_with_ban_revokes_the_tokens_that_identity_holds(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Join tokens fetched before the kick are sent to the MC to refuse: the banned
    identity's only, newest first, at most MAX_REVOKED_TOKENS, not the kicked one."""
    monkeypatch.setattr(service, "MAX_REVOKED_TOKENS", 2)
    mcs, clock = JoinedControllers(), ManualClock()
    async with _gc(tmp_path, mcs, clock) as (running, client_id, secret):
        async with open_api("h1", running.url, running.certificate_sha256) as api:
            owner = await api.token(client_id, secret)
            meeting = (
                await api.request(
                    "POST", "/api/v1/meetings", json_body={"display_name": "m"}, token=owner
                )
            ).json()["meeting_id"]
            join = f"/api/v1/meetings/{meeting}/join"

            async def fetch(**kwargs: Any) -> str:
                reply = await api.request("POST", join, json_body={}, **kwargs)
                assert reply.status == 200, reply.body
                clock.advance(1)  # each token expires a second after the one before
                return token_id(reply.json()["join_token"])

            spares = [await fetch() for _ in range(3)]  # anonymous: this address
            first = mcs.sessions["p-1"] = await fetch()
            host = await fetch(token=owner)
            kick = f"/api/v1/meetings/{meeting}/participants/p-1"
            assert (await api.request("DELETE", kick, token=owner)).status == 204
            assert mcs.revoked == []  # no ban: nothing revoked
            mcs.sessions["p-2"] = spares[0]
            kick = f"/api/v1/meetings/{meeting}/participants/p-2"
            assert (await api.request("DELETE", kick + "?ban=true", token=owner)).status == 204
            # The newest two of the three it holds besides the kicked one (the first kick's
            # included: the MC refuses it already, the GC does not know).
            assert mcs.revoked == [[first, spares[2]]]
            assert host not in mcs.revoked[0]
