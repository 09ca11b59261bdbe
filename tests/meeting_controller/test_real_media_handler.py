"""With the real Media Handler: it registers with the MC, joins are placed on it, its connection
token opens the media session, and a kick removes the participant there too."""

from __future__ import annotations

import functools
import pathlib

import pytest
import trio

from darktower.errors import CapacityExceeded
from darktower.media_handler import Running as MhRunning
from darktower.media_handler import serve as serve_mh
from darktower.model import Role
from darktower.protocol.pb.v1 import common_pb2
from darktower.protocol.pb.v1 import signaling_pb2 as sig
from darktower.transport import SessionRefused, connect_webtransport
from tests._stack import mh_settings

from ._harness import WAIT_S, open_stack, wait_ended


async def test_join_and_kick_with_the_real_media_handler(tmp_path: pathlib.Path) -> None:
    async with open_stack(tmp_path, media_handler="") as stack, trio.open_nursery() as nursery:
        mc_grpc = f"127.0.0.1:{stack.running.grpc_address[1]}"
        settings = mh_settings(drain_grace_s=10.0, mc_grpc=mc_grpc, handler_id="mh-real")
        shutdown = trio.Event()
        mh: MhRunning = await nursery.start(
            functools.partial(serve_mh, settings, shutdown=shutdown)
        )
        with trio.fail_after(WAIT_S):
            await stack.running.controller.mhs.wait_for("mh-real")
        await stack.assign("m")
        async with stack.join("m", Role.HOST) as host, stack.join("m") as guest:
            media = guest.join_response.media_server
            assert media.media_handler_url == mh.media_url
            url = f"{media.media_handler_url}?token={media.connection_token}"
            with pytest.raises(SessionRefused):
                async with connect_webtransport(
                    f"{mh.media_url}?token=forged",
                    server_certificate_hashes=[mh.certificate_sha256],
                ):
                    pass
            async with connect_webtransport(
                url, server_certificate_hashes=[mh.certificate_sha256]
            ) as media_session:
                await host.request(
                    sig.ClientMessage(kick=sig.KickParticipant(participant_id=guest.participant_id))
                )
                assert (await wait_ended(guest)).reason == common_pb2.KICKED
                # the MH removed the participant at once: its media session is closed
                with trio.fail_after(WAIT_S):
                    await media_session.wait_closed()
        shutdown.set()


async def test_a_full_media_handler_room_refuses_the_join_as_capacity_exceeded(
    tmp_path: pathlib.Path,
) -> None:
    """The MH's room cap reaches the joiner as CAPACITY_EXCEEDED (the meeting is full), not as
    an internal error."""
    async with open_stack(tmp_path, media_handler="") as stack, trio.open_nursery() as nursery:
        mc_grpc = f"127.0.0.1:{stack.running.grpc_address[1]}"
        settings = mh_settings(
            drain_grace_s=10.0,
            mc_grpc=mc_grpc,
            handler_id="mh-small",
            max_participants_per_room=1,
        )
        shutdown = trio.Event()
        await nursery.start(functools.partial(serve_mh, settings, shutdown=shutdown))
        with trio.fail_after(WAIT_S):
            await stack.running.controller.mhs.wait_for("mh-small")
        await stack.assign("m")
        async with stack.join("m", Role.HOST):
            with pytest.raises(CapacityExceeded, match="full"):
                async with stack.join("m"):
                    raise AssertionError("joined a full room")
        shutdown.set()
