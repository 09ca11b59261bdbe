"""``python -m darktower`` runs a media processor in a child process (darktower/stack_processor.py,
docs/architecture.md §10): an MH of the stack's cluster may call it, it runs at a lower
priority, a recorded meeting's files land in the data directory the GC serves, it is started
again when it dies while the stack goes on, and it drains with the stack, leaving no process
behind, also when the stack itself is killed."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import trio

from darktower.__main__ import Running
from darktower.client import media_url, open_gc_client, open_media_client, open_signaling
from darktower.frames import FrameType
from darktower.processing import RecordingStore
from darktower.protocol.pb.v1 import common_pb2 as common
from darktower.protocol.pb.v1 import processing_pb2 as pb
from darktower.protocol.pb.v1 import signaling_pb2 as sig
from darktower.protocol.pb.v1.processing_grpc import MediaProcessingStub
from darktower.servicekit import ServiceRole, expect_peer
from darktower.stack_processor import NICE
from darktower.transport.rpc import call, open_rpc_channel

from ._stack import dev_stack, next_message
from .processing._media import video_frames

WAIT_S = 60.0  # interpreters start on a shared 2-core machine
PORTS = ("api", "page", "signal", "media", "gc_grpc", "mc_grpc", "mh_grpc", "mc_ops", "mh_ops")
PORTS += ("mp_grpc", "mp_ops")


async def _list_jobs(running: Running) -> pb.ListJobsResponse:
    """ListJobs on the stack's processor, as the stack's MH (its cluster certificate)."""
    assert running.processor is not None
    host, port = await running.processor.ready()
    tls = running.cluster[ServiceRole.MH].client_context()
    check = expect_peer(ServiceRole.MP, running.cluster[ServiceRole.MP].identity.id)
    async with open_rpc_channel(host, port, tls=tls, check_peer=check) as channel:
        reply: pb.ListJobsResponse = await call(
            MediaProcessingStub(channel).ListJobs, pb.ListJobsRequest()
        )
        return reply


def _nice(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[16])


async def _exited(pid: int) -> None:
    """Returns once process ``pid`` (not necessarily our child) has exited."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        await trio.lowlevel.wait_readable(fd)
    finally:
        os.close(fd)


async def test_the_stack_runs_a_processor_its_mh_may_call_and_drains_it(
    tmp_path: pathlib.Path,
) -> None:
    async with dev_stack(tmp_path / "data") as running:
        processor = running.processor
        assert processor is not None
        with trio.fail_after(WAIT_S):
            reply = await _list_jobs(running)
        assert list(reply.jobs) == []
        pid = processor.pid
        assert pid is not None and _nice(pid) >= NICE
        recordings = (tmp_path / "data" / "recordings").resolve()
        assert processor.settings.recordings_dir == str(recordings)
        # The MH is pointed at it.
        assert processor.address is not None
        assert running.mh.handler.settings.processors.endswith(f":{processor.address[1]}")
    # The stack has drained: the processor exited cleanly and was reaped.
    assert processor.pid is None and processor.clean
    with trio.fail_after(1):
        await _exited(pid)  # gone already: reaped by the stack


async def test_a_processor_that_dies_is_started_again_on_its_port(tmp_path: pathlib.Path) -> None:
    async with dev_stack(tmp_path / "data") as running:
        processor = running.processor
        assert processor is not None
        with trio.fail_after(WAIT_S):
            address = await processor.ready()
        pid = processor.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        with trio.fail_after(WAIT_S):
            assert await processor.ready(not_pid=pid) == address
            reply = await _list_jobs(running)
        assert list(reply.jobs) == [] and processor.starts == 2
        # The stack went on: the MH is still registered with the MC.
        assert running.mh.handler_id in running.mc.controller.mhs.links
    assert processor.pid is None and processor.clean


# The stack's MH admits only the page's origins (and the GC's): a processor's job sends one of
# them (StartJobRequest.origin), or the MH would refuse its session (403) and record nothing.
async def test_a_recorded_meeting_is_written_where_the_gc_serves_it(tmp_path: pathlib.Path) -> None:
    data = tmp_path / "data"
    # A key frame every 10: the job may join after the first one.
    frames = video_frames(2.0, width=160, height=120, bitrate=200_000, key_every=10)
    async with dev_stack(data) as running, httpx.AsyncClient(base_url=running.page_url) as page:
        pins = [running.certificate_sha256]
        creds = (await page.get("/api/v1/dev/credentials")).json()
        async with open_gc_client(running.api_url, server_certificate_hashes=pins) as gc:
            await gc.authenticate(creds["client_id"], creds["client_secret"])
            meeting = await gc.create_meeting("recorded", recording_enabled=True)
            async with (
                open_signaling(
                    meeting.meeting_controller_url,
                    meeting_id=meeting.meeting_id,
                    join_token=meeting.join_token,
                    participant_name="host",
                    server_certificate_hashes=pins,
                    origin=gc.origin,
                ) as host,
                open_media_client(
                    media_url(host.join_response), server_certificate_hashes=pins, origin=gc.origin
                ) as media,
            ):
                stream_id = "6f1c3c8e-3f0e-4d5e-9a57-0d6f4c1b2a10"
                await host.request(
                    sig.ClientMessage(
                        publish=sig.PublishStream(
                            stream_id=stream_id,
                            stream_type=common.VIDEO_CAMERA,
                            metadata=common.StreamMetadata(codec="VP8"),
                        )
                    )
                )
                # The MH started the recording on the stack's processor.
                status = await next_message(host, "recording_status", wait_s=WAIT_S)
                assert status.recording_status.recording
                publisher = await media.publish(stream_id)
                start = trio.current_time()
                for i, frame in enumerate(frames):  # paced as a camera would send them
                    await trio.sleep_until(start + i / 30)
                    kind = FrameType.VIDEO_KEY if frame.key else FrameType.VIDEO_DELTA
                    await publisher.send_frame(kind, frame.payload, timestamp_us=frame.timestamp_us)
                await gc.end_meeting(meeting.meeting_id)
    # The stack drained: the recording was finalized in the GC's recordings directory.
    [manifest] = RecordingStore(data / "recordings").manifests(meeting.meeting_id)
    assert manifest["status"] == "complete", manifest
    assert manifest["files"] and manifest["files"][0]["bytes"] > 0


@asynccontextmanager
async def _launcher(data: pathlib.Path) -> AsyncIterator[tuple[trio.Process, int]]:
    """``python -m darktower`` on free ports; yields it and its processor's pid once it is
    running. Killed on exit if still alive."""
    argv = [sys.executable, "-m", "darktower", f"--data-dir={data}", "--drain-grace-s=1"]
    argv += [f"--{name.replace('_', '-')}-port=0" for name in PORTS]
    env = {k: v for k, v in os.environ.items() if not k.startswith("DARKTOWER_")}
    process = await trio.lowlevel.open_process(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, env=env
    )
    try:
        assert process.stdout is not None
        printed = b""
        with trio.fail_after(WAIT_S):
            while b"dev client id" not in printed:
                data_in = await process.stdout.receive_some(4096)
                assert data_in, printed
                printed += data_in
        [line] = [x for x in printed.decode().splitlines() if "processor (MP)" in x]
        yield process, int(line.split(", pid ")[1].split(",")[0])
    finally:
        if process.returncode is None:
            process.kill()
        with trio.CancelScope(shield=True):
            await process.wait()


async def test_python_m_darktower_stops_its_processor_on_sigterm(tmp_path: pathlib.Path) -> None:
    async with _launcher(tmp_path / "data") as (stack, processor_pid):
        stack.send_signal(signal.SIGTERM)
        with trio.fail_after(WAIT_S):
            assert await stack.wait() == 0
            await _exited(processor_pid)  # already reaped by the stack: returns at once


async def test_a_processor_whose_stack_is_killed_drains_by_itself(tmp_path: pathlib.Path) -> None:
    async with _launcher(tmp_path / "data") as (stack, processor_pid):
        stack.kill()
        await stack.wait()
        with trio.fail_after(WAIT_S):
            await _exited(processor_pid)
