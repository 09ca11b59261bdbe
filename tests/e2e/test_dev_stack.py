"""``python -m darktower``'s stack end to end, over real HTTP/3, WebTransport and gRPC:
REST (create, join, kick, end) → signaling (join, publish, subscribe) → media (frames routed
byte-identical) → kick and meeting end seen by each client with its reason."""

from __future__ import annotations

import logging
import pathlib
from contextlib import AsyncExitStack
from typing import Any

import httpx
import pytest
import trio

from darktower.client import (
    MediaClient,
    SignalingClient,
    media_url,
    open_gc_client,
    open_media_client,
    open_signaling,
)
from darktower.model import LeaveReason
from darktower.protocol.pb import common_pb2 as common
from darktower.transport import SessionRefused, connect_webtransport
from tests._stack import dev_stack

from ._flow import WAIT_S, next_event, publish_to


async def test_create_join_publish_subscribe_kick_end(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="darktower")
    await _create_join_publish_subscribe_kick_end(tmp_path)
    # The stack drains MC, then MH, then GC: nobody calls a service that has already stopped.
    assert [r.getMessage() for r in caplog.records if r.name.startswith("darktower")] == []


async def _create_join_publish_subscribe_kick_end(tmp_path: pathlib.Path) -> None:
    async with dev_stack(tmp_path / "data") as stack, AsyncExitStack() as stack_cm:
        pins = [stack.certificate_sha256]
        # The browser page and the dev credential are served on plain HTTP at 127.0.0.1.
        async with httpx.AsyncClient(base_url=stack.page_url) as page:
            assert "<html" in (await page.get("/")).text
            creds: dict[str, Any] = (await page.get("/api/v1/dev/credentials")).json()
            cert = (await page.get("/api/v1/dev/certificate")).json()
        assert bytes.fromhex(cert["sha256"]) == stack.certificate_sha256

        gc = await stack_cm.enter_async_context(
            open_gc_client(stack.api_url, server_certificate_hashes=pins)
        )
        await gc.authenticate(creds["client_id"], creds["client_secret"])
        meeting = await gc.create_meeting("Standup")
        assert meeting.meeting_controller_url == stack.signal_url

        async def member(token: str, name: str) -> tuple[SignalingClient, MediaClient]:
            signaling = await stack_cm.enter_async_context(
                open_signaling(
                    meeting.meeting_controller_url,
                    meeting_id=meeting.meeting_id,
                    join_token=token,
                    participant_name=name,
                    server_certificate_hashes=pins,
                    origin=gc.origin,
                )
            )
            assert signaling.join_response is not None
            media = await stack_cm.enter_async_context(
                open_media_client(
                    media_url(signaling.join_response),
                    server_certificate_hashes=pins,
                    origin=gc.origin,
                )
            )
            return signaling, media

        host, host_media = await member(meeting.join_token, "host")
        guests = []
        owner_token, gc.access_token = gc.access_token, None  # guests join without a token
        for name in ("ann", "bob"):
            ticket = await gc.join_meeting(meeting.meeting_id, name)
            assert ticket.role == "guest"
            guests.append(await member(ticket.join_token, name))
        gc.access_token = owner_token

        info = await gc.get_meeting(meeting.meeting_id)
        assert info["meeting_id"] == meeting.meeting_id

        await publish_to(host, host_media, guests)

        # Kick bob through the REST API: he sees KICKED, the others ParticipantLeft(KICKED).
        bob, _ = guests[1]
        await gc.kick(meeting.meeting_id, bob.participant_id)
        with trio.fail_after(WAIT_S):
            await bob.closed.wait()
        assert bob.end_reason == LeaveReason.KICKED
        left = await next_event(host, "participant_left")
        assert left.participant_left.participant_id == bob.participant_id
        assert left.participant_left.reason == common.KICKED

        # End the meeting: everyone left gets MEETING_ENDED.
        await gc.end_meeting(meeting.meeting_id)
        for client in (host, guests[0][0]):
            with trio.fail_after(WAIT_S):
                await client.closed.wait()
            assert client.end_reason == LeaveReason.MEETING_ENDED
        assert (await gc.get_meeting(meeting.meeting_id))["status"] == "ended"


async def test_only_the_pages_origins_may_open_sessions(tmp_path: pathlib.Path) -> None:
    """MC and MH of the development stack accept the page's own origins and the GC's (which the
    client library sends), and refuse any other origin, or none, with 403 before anything
    else runs."""
    async with dev_stack(tmp_path / "data") as stack:
        pins = [stack.certificate_sha256]
        page = stack.page_url.rstrip("/")

        async def status(url: str, origin: str | None) -> int:
            try:
                async with connect_webtransport(url, server_certificate_hashes=pins, origin=origin):
                    return 200
            except SessionRefused as exc:
                return exc.status

        for url in (stack.signal_url, stack.media_url):
            assert await status(url, "https://evil.example") == 403
            assert await status(url, page.replace("127.0.0.1", "localhost")) != 403
            assert await status(url, None) == 403
        # the signaling session itself is accepted from the page's origin and the GC's
        assert await status(stack.signal_url, page) == 200
        assert await status(stack.signal_url, stack.api_url.rstrip("/")) == 200


async def test_shutdown_with_a_live_meeting_drains_in_order(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Ctrl-C with people in a meeting: they get SERVER_SHUTDOWN, and the MC's cleanup still
    reaches the MH and the GC (drained after it), so nothing is cut off or retried."""
    caplog.set_level(logging.WARNING, logger="darktower")
    shutdown = trio.Event()
    async with dev_stack(tmp_path / "data", shutdown) as stack, AsyncExitStack() as clients:
        pins = [stack.certificate_sha256]
        async with httpx.AsyncClient(base_url=stack.page_url) as page:
            creds = (await page.get("/api/v1/dev/credentials")).json()
        gc = await clients.enter_async_context(
            open_gc_client(stack.api_url, server_certificate_hashes=pins)
        )
        await gc.authenticate(creds["client_id"], creds["client_secret"])
        meeting = await gc.create_meeting("live")
        host = await clients.enter_async_context(
            open_signaling(
                meeting.meeting_controller_url,
                meeting_id=meeting.meeting_id,
                join_token=meeting.join_token,
                server_certificate_hashes=pins,
                origin=gc.origin,
            )
        )
        await clients.enter_async_context(
            open_media_client(
                media_url(host.join_response), server_certificate_hashes=pins, origin=gc.origin
            )
        )
        shutdown.set()  # as Ctrl-C does, with the host still in the meeting
        with trio.fail_after(WAIT_S):
            await host.closed.wait()
        assert host.end_reason == LeaveReason.SERVER_SHUTDOWN
    # (leaving the block waits for every service to stop)
    assert [r.getMessage() for r in caplog.records if r.name.startswith("darktower")] == []
