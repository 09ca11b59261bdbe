"""``python -m darktower --media-workers 2``: the all-in-one runs its Media Handler as two
worker processes (docs/architecture.md §4.6), each with a certificate of the in-memory cluster
CA, both registered with the MC; two meetings land on different workers; a drain leaves no
worker process behind."""

from __future__ import annotations

import functools
import os
import pathlib
from contextlib import AsyncExitStack
from typing import Any

import httpx
import trio

from darktower import __main__ as dev
from darktower.client import open_gc_client, open_signaling
from darktower.model import MeetingId

WAIT_S = 60.0  # two interpreters start on a shared 2-core machine


def _children() -> list[int]:
    """Live processes whose parent is this one."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == os.getpid() and fields[0] != "Z":
            out.append(int(entry))
    return out


async def test_the_all_in_one_runs_two_media_workers(tmp_path: pathlib.Path) -> None:
    ports = ("api", "page", "signal", "media", "gc_grpc", "mc_grpc", "mh_grpc", "mc_ops", "mh_ops")
    ports += ("mp_grpc", "mp_ops")  # the media processor's child process
    options: dict[str, Any] = {f"{name}_port": 0 for name in ports}
    settings = dev.Settings(
        **options, data_dir=str(tmp_path / "data"), drain_grace_s=1.0, media_workers=2
    )
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        with trio.fail_after(WAIT_S):
            running: dev.Running = await nursery.start(
                functools.partial(dev.serve, settings, shutdown=stop)
            )
            workers: list[str] = running.mh
            assert len(workers) == 2
            controller = running.mc.controller
            for handler_id in workers:
                await controller.mhs.wait_for(handler_id)
        assert len(_children()) == 3  # the two workers and the media processor
        pins = [running.certificate_sha256]
        async with httpx.AsyncClient(base_url=running.page_url) as page:
            creds = (await page.get("/api/v1/dev/credentials")).json()
        async with AsyncExitStack() as clients:
            gc = await clients.enter_async_context(
                open_gc_client(running.api_url, server_certificate_hashes=pins)
            )
            await gc.authenticate(creds["client_id"], creds["client_secret"])
            placed = set()
            for name in ("one", "two"):
                meeting = await gc.create_meeting(name)
                await clients.enter_async_context(
                    open_signaling(
                        meeting.meeting_controller_url,
                        meeting_id=meeting.meeting_id,
                        join_token=meeting.join_token,
                        server_certificate_hashes=pins,
                        origin=gc.origin,
                    )
                )
                room = controller.rooms[MeetingId(meeting.meeting_id)]
                assert room.mh is not None
                placed.add(room.mh.handler_id)
            assert placed == set(workers)
        stop.set()
    assert _children() == []  # both workers drained and were reaped
