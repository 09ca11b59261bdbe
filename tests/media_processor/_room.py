"""A real MH and a real media processor on 127.0.0.1, and the test acting as their MC: it
registers participants (the processor's job among them, as the hidden participant an MH makes
of it) and routes streams over the MH's gRPC, and starts jobs over the processor's
(docs/architecture.md §10)."""

from __future__ import annotations

import pathlib
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio

from darktower import media_handler, media_processor
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
