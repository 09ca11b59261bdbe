"""A real MH and a real media processor on 127.0.0.1, and the test acting as their MC: it
registers participants (the processor's job among them, as the hidden participant an MH makes
of it) and routes streams over the MH's gRPC, and starts jobs over the processor's
(docs/architecture.md §10)."""

from __future__ import annotations

import pathlib
import uuid
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import Any

import attrs
import trio
import trio.testing

from darktower import media_handler, media_processor
from darktower.client import MediaClient, open_media_client
from darktower.protocol.pb.v1 import common_pb2
from darktower.protocol.pb.v1 import media_control_pb2 as mc_pb
from darktower.protocol.pb.v1 import processing_pb2 as pb
from darktower.protocol.pb.v1.media_control_grpc import MediaControlStub
from darktower.protocol.pb.v1.processing_grpc import MediaProcessingStub
from darktower.transport import TlsCredentials, generate_dev_certificate
from darktower.transport.rpc import call
from tests._cluster import open_cluster_channel, stack_cluster
from tests._stack import HOST, WAIT_S, mh_settings, running_service

MEETING = "processed"


def mp_settings(recordings: pathlib.Path, **overrides: Any) -> media_processor.Settings:
    ident = f"mp-{uuid.uuid4().hex[:8]}"
    values: dict[str, Any] = {
        "grpc_host": HOST,
        "grpc_port": 0,
        "ops_port": 0,
        "processor_id": ident,
        "recordings_dir": str(recordings),
        "drain_grace_s": 2.0,
        **stack_cluster().options("mp", ident),
    }
    return media_processor.Settings(**{**values, **overrides})


@attrs.define(eq=False)
class Room:
    mh: media_handler.Running
    mp: media_processor.Running
    media: MediaControlStub
    processing: MediaProcessingStub
    tls: TlsCredentials
    recordings: pathlib.Path

    async def register(self, pid: str, streams: list[common_pb2.MediaStream] = ()) -> str:  # type: ignore[assignment]
        """Register ``pid`` in the room; its media URL with its token."""
        reply = await call(
            self.media.RegisterParticipant,
            mc_pb.RegisterParticipant(participant_id=pid, meeting_id=MEETING, streams=streams),
        )
        return f"{reply.media_handler_url}?token={reply.connection_token}"

    async def route(self, stream_id: str, *to: str) -> None:
        await call(
            self.media.RouteMedia,
            mc_pb.RouteMediaCommand(
                source_stream_id=stream_id, destination_participant_ids=list(to), meeting_id=MEETING
            ),
        )

    async def start_job(self, job_id: str, url: str, **job: Any) -> None:
        request = pb.StartJobRequest(
            job_id=job_id,
            meeting_id=MEETING,
            media_url=url,
            media_certificate_sha256=self.tls.sha256,
            **job,
        )
        await call(self.processing.StartJob, request)
        jobs = self.mp.jobs
        with trio.fail_after(WAIT_S):
            await jobs.progress.until(lambda: jobs.state(job_id) in ("running", "ended"))

    async def wait_job(self, job_id: str, state: str = "ended") -> None:
        jobs = self.mp.jobs
        with trio.fail_after(WAIT_S):
            await jobs.progress.until(lambda: jobs.state(job_id) == state)


@asynccontextmanager
async def open_room(tmp_path: pathlib.Path, **mp: Any) -> AsyncIterator[Room]:
    tls = generate_dev_certificate()
    certfile, keyfile = tls.write(tmp_path)
    recordings = tmp_path / "recordings"
    async with (
        running_service(
            media_handler.serve, mh_settings(certfile=str(certfile), keyfile=str(keyfile))
        ) as (mh, _),
        running_service(media_processor.serve, mp_settings(recordings, **mp)) as (proc, _),
        open_cluster_channel(mh.grpc_address, "mc", "mc-test", server="mh") as to_mh,
        open_cluster_channel(proc.grpc_address, "mh", mh.handler_id, server="mp") as to_mp,
    ):
        yield Room(mh, proc, MediaControlStub(to_mh), MediaProcessingStub(to_mp), tls, recordings)


# --- an MH that uses its processors itself (docs/protocol.md §15) ------------------------------
def video_stream(stream_id: str, codec: str = "VP8") -> common_pb2.MediaStream:
    return common_pb2.MediaStream(
        stream_id=stream_id,
        stream_type=common_pb2.VIDEO_CAMERA,
        metadata=common_pb2.StreamMetadata(codec=codec),
    )


def audio_stream(stream_id: str) -> common_pb2.MediaStream:
    return common_pb2.MediaStream(
        stream_id=stream_id,
        stream_type=common_pb2.AUDIO,
        metadata=common_pb2.StreamMetadata(codec="opus"),
    )


@attrs.define(eq=False)
class ProcessedRoom:
    """A real MH configured with its processors (``--processors``), the test as its MC."""

    mh: media_handler.Running
    mp: media_processor.Running | None  # None: the processor is another process, or none
    media: MediaControlStub
    tls: TlsCredentials
    recordings: pathlib.Path
    mh_shutdown: trio.Event  # set: the MH drains

    async def register(self, pid: str, *streams: common_pb2.MediaStream) -> str:
        """Register ``pid`` in the room; its media URL with its token."""
        reply = await call(
            self.media.RegisterParticipant,
            mc_pb.RegisterParticipant(
                participant_id=pid, meeting_id=MEETING, streams=list(streams)
            ),
        )
        return f"{reply.media_handler_url}?token={reply.connection_token}"

    async def route(
        self, source: str, *to: str, unroute: bool = False, **options: Any
    ) -> mc_pb.RouteMediaResponse:
        return await call(
            self.media.RouteMedia,
            mc_pb.RouteMediaCommand(
                source_stream_id=source,
                destination_participant_ids=list(to),
                meeting_id=MEETING,
                unroute=unroute,
                options=mc_pb.RoutingOptions(**options),
            ),
        )

    async def remove(self, pid: str, reason: int) -> None:
        await call(
            self.media.RemoveParticipant,
            mc_pb.RemoveParticipantRequest(
                meeting_id=MEETING,
                participant_id=pid,
                reason=reason,  # type: ignore[arg-type]
            ),
        )

    def client(self, url: str) -> AbstractAsyncContextManager[MediaClient]:
        return open_media_client(url, server_certificate_hashes=[self.tls.sha256])

    def job_ids(self, kind: str) -> list[str]:
        """The MH's jobs of ``kind`` (their hidden participants' ids)."""
        processing = self.mh.handler.processing
        return [j.job_id for j in processing.jobs.values() if j.kind == kind]

    async def wait_ready(self, job_id: str, *sources: str) -> None:
        """Wait until the job ``job_id`` has its media connection to the MH and receives
        ``sources`` there (the processor runs in this process, or another)."""
        room = self.mh.handler.rooms[MEETING]  # type: ignore[index]
        member = room.members[job_id]  # type: ignore[index]
        with trio.fail_after(WAIT_S):
            await member.settled.wait()
            # The MH subscribes the job as its connection starts, without waiting for I/O.
            # (No cushion: a mix's clock wakes every 20 ms.)
            await trio.testing.wait_all_tasks_blocked()
        for source in sources:
            assert job_id in room.publications[source].subscriptions  # type: ignore[index]

    async def wait_job(self, job_id: str, state: str) -> None:
        """Wait until the in-process processor's job ``job_id`` is in ``state``."""
        assert self.mp is not None
        jobs = self.mp.jobs
        with trio.fail_after(WAIT_S):
            await jobs.progress.until(lambda: jobs.state(job_id) == state)


@asynccontextmanager
async def open_processed_room(
    tmp_path: pathlib.Path, *, processors: str | None = None, before: str = "", **mp: Any
) -> AsyncIterator[ProcessedRoom]:
    """A processor in this process (``processors`` None) or the given ones ("" for none),
    and an MH that uses them (``before`` listed first); yields once both run."""
    tls = generate_dev_certificate()
    certfile, keyfile = tls.write(tmp_path)
    recordings = tmp_path / "recordings"
    async with AsyncExitStack() as stack:
        proc: media_processor.Running | None = None
        if processors is None:
            proc, _ = await stack.enter_async_context(
                running_service(media_processor.serve, mp_settings(recordings, **mp))
            )
            processors = "{}:{}".format(*proc.grpc_address)
        processors = ",".join(p for p in (before, processors) if p)
        mh, mh_shutdown = await stack.enter_async_context(
            running_service(
                media_handler.serve,
                mh_settings(certfile=str(certfile), keyfile=str(keyfile), processors=processors),
            )
        )
        to_mh = await stack.enter_async_context(
            open_cluster_channel(mh.grpc_address, "mc", "mc-test", server="mh")
        )
        yield ProcessedRoom(mh, proc, MediaControlStub(to_mh), tls, recordings, mh_shutdown)
