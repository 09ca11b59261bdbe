"""``serve``: the media processor process (docs/architecture.md §10).

Owns, in one nursery: the task tree (rooms ⊃ jobs ⊃ their tasks), the MediaProcessing gRPC
server (mutual TLS; only an MH calls it) and the ops listener. Its jobs reach the MHs as
WebTransport clients, with the connection tokens the MHs give them. On ``shutdown`` it takes
no new job and ends every job with SERVER_SHUTDOWN within ``drain_grace_s`` (their files
finalized). With a recordings bucket it also owns the uploads to it (``_uploads.py``), which a
drain gives ``drain_grace_s`` more to finish.
"""

from __future__ import annotations

import functools
import logging
import pathlib

import attrs
import trio

from darktower.config import ConfigError
from darktower.errors import InvalidRequest
from darktower.logs import fields
from darktower.metrics import Registry
from darktower.model import LeaveReason
from darktower.nurseries import TaskTree
from darktower.processing import RecordingStore, S3Store, capabilities, open_bucket
from darktower.protocol.pb.v1 import processing_pb2 as pb
from darktower.protocol.pb.v1.processing_grpc import MediaProcessingBase
from darktower.servicekit import (
    ClusterTls,
    ServiceRole,
    callers,
    load_cluster_tls,
    own_id,
    serve_ops,
)
from darktower.transport.rpc import open_rpc_loop, rpc_service, serve_rpc

from ._connections import SharedConnections
from ._jobs import RECORDING_TRANSPORT, Jobs
from ._mixing import MixJob
from ._recording import RecordingJob
from ._settings import Settings
from ._transcoding import TranscodeJob
from ._uploads import Uploads

logger = logging.getLogger("darktower.media_processor")


@attrs.frozen
class Running:
    """What a started processor listens on."""

    processor_id: str
    grpc_address: tuple[str, int]
    ops_url: str
    jobs: Jobs = attrs.field(eq=False, repr=False)  # for tests and the launcher
    store: RecordingStore = attrs.field(eq=False, repr=False)
    uploads: Uploads | None = attrs.field(default=None, eq=False, repr=False)


class MediaProcessing:
    """The MediaProcessing gRPC methods (trio), delegating to :class:`Jobs`."""

    def __init__(self, jobs: Jobs, metrics: _Metrics) -> None:
        self._jobs = jobs
        self._metrics = metrics

    async def StartJob(self, request: pb.StartJobRequest) -> pb.StartJobResponse:
        try:
            await self._jobs.start(request)
        except Exception as exc:
            self._metrics.refused.inc(1.0, type(exc).__name__)
            raise
        return pb.StartJobResponse()

    async def UpdateJob(self, request: pb.UpdateJobRequest) -> pb.UpdateJobResponse:
        await self._jobs.update(request)
        return pb.UpdateJobResponse()

    async def StopJob(self, request: pb.StopJobRequest) -> pb.StopJobResponse:
        try:
            reason = LeaveReason(request.reason)
        except ValueError:
            raise InvalidRequest(f"unknown leave reason {request.reason}") from None
        self._jobs.stop(request.job_id, reason)
        return pb.StopJobResponse()

    async def RequestKeyFrame(self, request: pb.JobKeyFrameRequest) -> pb.JobKeyFrameResponse:
        self._jobs.key_frame(request)
        return pb.JobKeyFrameResponse()

    async def ListJobs(self, request: pb.ListJobsRequest) -> pb.ListJobsResponse:
        return pb.ListJobsResponse(jobs=self._jobs.statuses())


CALLERS = {
    name: ServiceRole.MH
    for name in ("StartJob", "UpdateJob", "StopJob", "RequestKeyFrame", "ListJobs")
}


class _Metrics:
    """``/metrics``: jobs running by kind, jobs refused, codec CPU and frames dropped by
    reason (the jobs running and those that ended, since the start)."""

    def __init__(self, registry: Registry) -> None:
        self.running = registry.gauge("dt_mp_jobs", "Jobs running, by kind.", ("kind",))
        self.started = registry.gauge("dt_mp_jobs_started", "Jobs started since the start.")
        self.refused = registry.counter(
            "dt_mp_jobs_refused_total", "StartJob calls refused, by error.", ("error",)
        )
        self.cpu = registry.gauge(
            "dt_mp_job_cpu_seconds",
            "Codec CPU seconds of the jobs since the start, by kind.",
            ("kind",),
        )
        self.dropped = registry.gauge(
            "dt_mp_job_frames_dropped",
            "Frames the jobs dropped since the start, by kind and reason.",
            ("kind", "reason"),
        )
        self.uploads = registry.gauge(
            "dt_mp_recording_uploads",
            "Recordings uploaded to the bucket since the start, by result (uploaded, failed).",
            ("result",),
        )

    def refresh(self, jobs: Jobs, uploads: Uploads | None) -> None:
        if uploads is not None:
            self.uploads.set(float(uploads.uploaded), "uploaded")
            self.uploads.set(float(uploads.failed), "failed")
        self.started.set(float(jobs.started))
        live = jobs.live()
        for kind in ("recording", "transcode", "mix"):
            of_kind = [j for j in live if j.kind == kind]
            self.running.set(float(len(of_kind)), kind)
            cpu = jobs.ended_cpu_s.get(kind, 0.0) + sum(j.codec.cpu_s for j in of_kind)
            self.cpu.set(cpu, kind)
            ended = jobs.ended_totals.get(kind)
            reasons: dict[str, int] = dict(ended.counts) if ended is not None else {}
            for job in of_kind:
                for reason, count in job.drops.counts.items():
                    reasons[reason] = reasons.get(reason, 0) + count
            for reason, count in reasons.items():
                self.dropped.set(float(count), kind, reason)


async def serve(
    settings: Settings,
    *,
    shutdown: trio.Event,
    task_status: trio.TaskStatus[Running] = trio.TASK_STATUS_IGNORED,
    cluster: ClusterTls | None = None,
) -> None:
    """Run the processor until ``shutdown`` is set, then drain and return. Reports
    :class:`Running` once its listeners are bound. Raises OSError if a port cannot be bound,
    ConfigError without usable cluster credentials."""
    cluster = load_cluster_tls(
        settings.cluster_ca,
        settings.cluster_cert,
        settings.cluster_key,
        role=ServiceRole.MP,
        given=cluster,
    )
    processor_id = own_id(cluster, settings.processor_id, "--processor-id")
    found = capabilities()
    logger.info("media processor codecs", extra=fields(codecs=found.describe()))
    store = RecordingStore(pathlib.Path(settings.recordings_dir))
    bucket = _bucket(settings)
    uploads = (
        Uploads(store, bucket, keep_local=settings.recordings_s3_keep_local)
        if bucket is not None
        else None
    )
    registry = Registry()
    metrics = _Metrics(registry)
    async with open_rpc_loop(), trio.open_nursery() as nursery:
        if uploads is not None:
            # Before any job: what an earlier run left to upload is found first.
            await nursery.start(uploads.run)
            logger.info("recordings bucket", extra=fields(bucket=uploads.bucket.describe()))
        shared = SharedConnections(RECORDING_TRANSPORT)
        await nursery.start(shared.run)
        tree = TaskTree(registry=registry)
        await nursery.start(tree.run)
        jobs = Jobs(
            tree,
            {
                "recording": functools.partial(RecordingJob, store=store, uploads=uploads),
                "transcode": TranscodeJob,
                "mix": MixJob,
            },
            {
                "recording": settings.max_recordings,
                "transcode": settings.max_transcodes,
                "mix": settings.max_mixes,
            },
            shared=shared,
        )
        grpc_port = await nursery.start(
            functools.partial(
                serve_rpc,
                [
                    rpc_service(
                        MediaProcessingBase,
                        MediaProcessing(jobs, metrics),
                        authorize=callers(CALLERS),
                    )
                ],
                settings.grpc_host,
                settings.grpc_port,
                tls=cluster.server_context(),
            )
        )

        def render() -> str:
            metrics.refresh(jobs, uploads)
            return registry.render()

        ops_url = await nursery.start(
            functools.partial(
                serve_ops, settings.ops_port, metrics=render, ready=lambda: True, tree=tree.snapshot
            )
        )
        running = Running(
            processor_id, (settings.grpc_host, grpc_port), ops_url, jobs, store, uploads
        )
        logger.info(
            "media processor running",
            extra=fields(grpc=f"{settings.grpc_host}:{grpc_port}", ops=ops_url),
        )
        task_status.started(running)
        await shutdown.wait()
        logger.info("media processor draining", extra=fields(grace_s=settings.drain_grace_s))
        tree.drain(settings.drain_grace_s, LeaveReason.SERVER_SHUTDOWN)
        await tree.wait_closed()
        if uploads is not None:
            # The recordings the drain ended are uploaded, within a grace of their own; what
            # is cut stays in the directory for the next start.
            uploads.close()
            with trio.move_on_after(settings.drain_grace_s):
                await uploads.done.wait()
        nursery.cancel_scope.cancel(reason="media processor shut down")


def _bucket(settings: Settings) -> S3Store | None:
    """The recordings bucket the settings name, if any; ConfigError naming what is wrong."""
    if not settings.recordings_s3_endpoint:
        return None
    try:
        return open_bucket(
            settings.recordings_s3_endpoint,
            settings.recordings_s3_bucket,
            settings.recordings_s3_prefix,
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
