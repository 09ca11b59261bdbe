"""The MH's links to its media processors (docs/architecture.md §10): one gRPC channel to
each ``--processors`` endpoint (mutual TLS; the server's certificate must name the role
``mp``), the MH's own count of its jobs on each, and the choice of where a job goes.

A job goes to the least-loaded usable processor; if that one refuses for capacity or cannot be
reached, the next is tried. A processor whose call failed is tried after the others for
PROCESSOR_RETRY_S (_limits.py). What a processor says (INVALID_REQUEST naming the codecs it
can encode, CAPACITY_EXCEEDED when none has room) reaches the caller unchanged.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager

import attrs
import trio

from darktower.errors import CapacityExceeded, DarkTowerError
from darktower.logs import fields
from darktower.protocol.addresses import split_host_port
from darktower.protocol.pb.v1 import processing_pb2 as pb
from darktower.protocol.pb.v1.processing_grpc import MediaProcessingStub
from darktower.servicekit import ClusterTls, ServiceRole, expect_peer
from darktower.transport.rpc import RpcError, call, open_rpc_channel

from ._limits import PROCESSOR_CALL_DEADLINE_S, PROCESSOR_KEY_FRAME_QUEUE, PROCESSOR_RETRY_S
from ._metrics import MediaMetrics

logger = logging.getLogger("darktower.media_handler")

NO_PROCESSOR = "no media processor"


def parse_processors(text: str) -> list[tuple[str, int]]:
    """``--processors``: comma-separated HOST:PORT (empty: none). ValueError for a bad one."""
    return [split_host_port(part.strip()) for part in text.split(",") if part.strip()]


@attrs.define(eq=False)
class ProcessorLink:
    """One media processor as this MH sees it."""

    endpoint: str  # HOST:PORT, its name in /metrics and logs
    stub: MediaProcessingStub
    key_frames: trio.MemorySendChannel[pb.JobKeyFrameRequest]
    jobs: int = 0  # this MH's jobs on it now
    down_until: float = -math.inf  # a call failed: tried after the others until then


class ProcessorPool:
    """The processors of ``--processors``; :meth:`open` dials them (the channels and the key
    frame senders live as long as its block)."""

    def __init__(self, endpoints: Sequence[tuple[str, int]], metrics: MediaMetrics) -> None:
        self.endpoints = list(endpoints)
        self.metrics = metrics
        self.links: list[ProcessorLink] = []

    @asynccontextmanager
    async def open(self, cluster: ClusterTls) -> AsyncIterator[None]:
        """Open a channel to every processor (lazily connected: an unreachable one fails its
        first call, not this) and run one key frame sender per processor. Owns the channels and
        the senders; on exit they are closed."""
        async with AsyncExitStack() as stack:
            nursery = await stack.enter_async_context(trio.open_nursery())
            for host, port in self.endpoints:
                channel = await stack.enter_async_context(
                    open_rpc_channel(
                        host,
                        port,
                        tls=cluster.client_context(),
                        check_peer=expect_peer(ServiceRole.MP),
                    )
                )
                send, receive = trio.open_memory_channel[pb.JobKeyFrameRequest](
                    PROCESSOR_KEY_FRAME_QUEUE
                )
                link = ProcessorLink(f"{host}:{port}", MediaProcessingStub(channel), send)
                self.links.append(link)
                nursery.start_soon(self._send_key_frames, link, receive)
            try:
                yield
            finally:
                nursery.cancel_scope.cancel()
                self.links = []

    def candidates(self) -> list[ProcessorLink]:
        """The processors in the order a new job tries them: usable ones by fewest jobs, then
        those that failed lately, oldest failure first."""
        now = trio.current_time()
        usable = [link for link in self.links if link.down_until <= now]
        failed = [link for link in self.links if link.down_until > now]
        return sorted(usable, key=lambda link: link.jobs) + sorted(
            failed, key=lambda link: link.down_until
        )

    async def start(self, request: pb.StartJobRequest) -> ProcessorLink:
        """Start the job on the first processor that takes it; its link (its count raised).
        Raises the processor's InvalidRequest (or other refusal but capacity) at once, its
        CapacityExceeded when every processor refused or failed and one said so, else
        CapacityExceeded("no media processor ...")."""
        if not self.links:
            raise CapacityExceeded(NO_PROCESSOR)
        refusal: CapacityExceeded | None = None
        for link in self.candidates():
            try:
                await self.call(link, "StartJob", request)
            except CapacityExceeded as exc:
                refusal = exc  # its own bound: the next one may have room
                continue
            except RpcError:
                continue  # counted; the next one
            link.jobs += 1
            return link
        if refusal is not None:
            raise refusal
        raise CapacityExceeded(f"{NO_PROCESSOR} is reachable")

    def release(self, link: ProcessorLink) -> None:
        link.jobs = max(0, link.jobs - 1)

    async def call(self, link: ProcessorLink, method: str, request: object) -> None:
        """One unary call on ``link`` (``method`` names the RPC). A transport failure is
        counted, marks the processor down for PROCESSOR_RETRY_S and is raised (RpcError); the
        processor's own errors are raised as they are."""
        try:
            await call(getattr(link.stub, method), request, deadline_s=PROCESSOR_CALL_DEADLINE_S)
        except RpcError as exc:
            link.down_until = trio.current_time() + PROCESSOR_RETRY_S
            self.metrics.processing_failures.inc(1, link.endpoint, "call")
            logger.warning(
                "media processor call failed: %s",
                exc,
                extra=fields(processor=link.endpoint, method=method),
            )
            raise
        link.down_until = -math.inf

    def request_key_frame(self, link: ProcessorLink, job_id: str, output_stream_id: str) -> None:
        """Queue a key frame request for a job's output (never blocks; full: dropped)."""
        request = pb.JobKeyFrameRequest(job_id=job_id, output_stream_id=output_stream_id)
        try:
            link.key_frames.send_nowait(request)
        except (trio.WouldBlock, trio.ClosedResourceError):
            self.metrics.processing_key_frames.inc(1, "dropped")
            return
        self.metrics.processing_key_frames.inc(1, "queued")

    async def _send_key_frames(
        self, link: ProcessorLink, requests: trio.MemoryReceiveChannel[pb.JobKeyFrameRequest]
    ) -> None:
        async with requests:
            async for request in requests:
                try:
                    await self.call(link, "RequestKeyFrame", request)
                except DarkTowerError as exc:  # the job ended meanwhile, or the processor
                    logger.debug(
                        "key frame request failed: %s",
                        exc,
                        extra=fields(processor=link.endpoint, job=request.job_id),
                    )
                except Exception:  # an error boundary: the next request goes on
                    logger.exception("key frame request failed", extra=fields(job=request.job_id))
