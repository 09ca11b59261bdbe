"""A Media Handler killed, or drained, during a live meeting (docs/architecture.md §4.6, docs/protocol.md
§13): ``python -m darktower.media --workers 2`` as a real process behind a real MC (in this
test's process); two participants talk through the client library; SIGKILL of the worker that
hosts their room (or SIGTERM: it drains) moves the room to the other worker (its participants registered there, their
routes restored) and each client reconnects its media there from the MC's MediaReconnect.
Nobody leaves; media flows again. The killed worker comes back under the same id and the room
stays where it moved."""

from __future__ import annotations

import os
import pathlib
import signal
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager

import pytest
import trio

from darktower.client import MeetingSession, ParticipantJoined, join_meeting_session
from darktower.model import MeetingId, Role
from darktower.transport import generate_dev_certificate
from tests.client.test_reconnect import expect, flows, talking
from tests.meeting_controller._harness import Stack, open_stack

from ._processes import ServiceProcess
from .test_media_workers import WAIT_S, _started, _until
from .test_media_workers import _workers as media_workers

MEETING = "failover"


def _workers(
    tmp_path: pathlib.Path, stack: Stack, base_id: str, tls: tuple[pathlib.Path, pathlib.Path]
) -> AbstractAsyncContextManager[tuple[ServiceProcess, list[int]]]:
    """test_media_workers's supervisor of WORKERS MHs, serving media with ``tls`` (the
    clients pin one certificate for every worker)."""
    return media_workers(tmp_path, stack, base_id, f"--certfile={tls[0]}", f"--keyfile={tls[1]}")


def _join(stack: Stack, name: str, role: Role, pin: bytes) -> AsyncIterator[MeetingSession]:
    return join_meeting_session(  # type: ignore[return-value]
        stack.running.signal_url,
        meeting_id=MEETING,
        join_token=stack.token(MEETING, role, participant_name=name),
        participant_name=name,
        server_certificate_hashes=[pin],
    )


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["killed", "drained"])
async def test_a_killed_or_draining_mhs_room_moves_and_media_comes_back_with_nobody_leaving(
    tmp_path: pathlib.Path, sig: signal.Signals
) -> None:
    creds = generate_dev_certificate()
    tls = creds.write(tmp_path)
    async with (
        open_stack(tmp_path, media_handler="", certfile=str(tls[0]), keyfile=str(tls[1])) as stack,
        _workers(tmp_path, stack, "mh-f", tls) as (supervisor, _),
    ):
        await stack.assign(MEETING)
        controller = stack.running.controller
        async with (
            _join(stack, "host", Role.HOST, creds.sha256) as host,
            _join(stack, "guest", Role.GUEST, creds.sha256) as guest,
        ):
            await expect(host, ParticipantJoined)
            to_guest = await talking(host, guest)
            to_host = await talking(guest, host)
            await flows(*to_guest)
            await flows(*to_host)
            room = controller.rooms[MeetingId(MEETING)]
            assert room.mh is not None
            doomed = room.mh.handler_id
            [pid] = _started(supervisor, doomed)
            ids = (host.participant_id, guest.participant_id)

            os.kill(pid, sig)
            signalled_at = trio.current_time()
            # A draining worker still carries media until the room has moved: wait for the
            # move first, or the check below would see the old path's frames.
            await _until(
                lambda: room.mh is not None and room.mh.handler_id != doomed, "the room moved"
            )
            await flows(*to_guest)
            await flows(*to_host)
            print(f"media back {trio.current_time() - signalled_at:.2f} s after {sig.name}")
            assert controller.metrics.rooms_moved.value() == 1
            assert (host.participant_id, guest.participant_id) == ids
            assert guest.participant_id in host.participants
            assert host.participant_id in guest.participants
            if sig is signal.SIGTERM:  # drained: it exits 0 once its participants moved
                await _until(
                    lambda: [r.get("status") for r in _exits(supervisor)] == [0],
                    "the drained worker exited 0",
                )

            # The worker comes back under its id (the supervisor restarts it); the room stays
            # where it moved.
            moved_to = room.mh
            with trio.fail_after(WAIT_S):
                back = await controller.mhs.wait_for(doomed)
            assert back.usable(trio.current_time())
            assert room.mh is moved_to
            await flows(*to_guest)
            # Nobody left: each still lists the other under the same id (a leave removes it,
            # a rejoin would bring a new id).
            assert guest.participant_id in host.participants
            assert set(room.members) == set(ids)


def _exits(supervisor: ServiceProcess) -> list[dict[str, object]]:
    return [r for r in supervisor.log_records() if r.get("msg") == "media worker exited"]
