"""The media processing benchmark's processes and gRPC (benchmarks/media_processing.py): a real
media processor process (``python -m darktower.processor``, a cluster certificate of role
``mp``), the driver as the MC of an MH (register, route) and as the MH of a processor (start,
stop and list jobs), the publisher processes, and the CPU of a process from /proc."""

from __future__ import annotations

import json
import os
import pathlib
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from benchmarks._cluster import IDS, cluster_options, cluster_tls
from benchmarks.transport_relay import _cpu_s
from darktower.servicekit import ServiceRole

SCRIPT = pathlib.Path(__file__).with_name("media_processing.py")
TARGET_BITRATE = 800_000
START_S = 60.0  # a job or a process that is not running by then fails the run
WAIT_POLL_S = 0.05


def spawn_script(*args: str, cpus: set[int] | None = None, nice: int = 0) -> subprocess.Popen[str]:
    """This benchmark's script in a child process (stdin and stdout pipes), on ``cpus`` and at
    ``nice`` when given."""
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=_placement(cpus, nice),
    )


def _placement(cpus: set[int] | None, nice: int) -> Callable[[], None] | None:
    if cpus is None and not nice:
        return None

    def place() -> None:  # in the child, before exec: every thread it makes inherits both
        if cpus is not None:
            os.sched_setaffinity(0, cpus)
        if nice:
            os.nice(nice)

    return place


def place_process(pid: int, cpus: set[int], nice: int) -> None:
    """Every thread of a running process on ``cpus`` at ``nice`` (threads made later by them
    inherit it)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        os.sched_setaffinity(int(tid), cpus)
        os.setpriority(os.PRIO_PROCESS, int(tid), nice)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run(fn: Callable[..., Any], *args: Any) -> Any:
    import trio

    from darktower.transport.rpc import open_rpc_loop

    async def main() -> Any:
        async with open_rpc_loop():
            return await fn(*args)

    try:
        return trio.run(main)
    except BaseExceptionGroup as group:  # one error out of the RPC loop's nursery: that error
        leaves = _leaves(group)
        if len(leaves) == 1:
            raise leaves[0] from group
        raise


def _leaves(error: BaseException) -> list[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in _leaves(inner)]
    return [error]


class Processor:
    """``python -m darktower.processor`` on a free port, its certificate from the run's cluster
    (``cluster``, benchmarks/_cluster.py); on ``cpus`` at ``nice`` when given."""

    def __init__(
        self,
        cluster: str,
        recordings: str,
        *,
        cpus: set[int] | None = None,
        nice: int = 0,
        max_transcodes: int = 4,
    ) -> None:
        self.cluster = cluster
        self.port = _free_port()
        options = {
            "grpc_port": self.port,
            "ops_port": 0,
            "recordings_dir": recordings,
            "max_transcodes": max_transcodes,
            "log_level": "warning",
            **cluster_options(cluster, ServiceRole.MP),
        }
        argv = [f"--{k.replace('_', '-')}={v}" for k, v in options.items()]
        # Its log (and the codec libraries' banners) to a file of the run, shown if it fails.
        self.log = pathlib.Path(recordings).with_suffix(f".{self.port}.log")
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "darktower.processor", *argv],
                stdin=subprocess.DEVNULL,
                stderr=log,
                preexec_fn=_placement(cpus, nice),
            )
        deadline = time.monotonic() + START_S
        while self.jobs() is None:  # listening once ListJobs answers
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.kill()
                self.proc.wait()
                log = self.log.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"the processor did not start ({self.proc.returncode}): {log}")
            time.sleep(0.2)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def cpu_s(self) -> float:
        return _cpu_s(self.proc.pid)

    def _call(self, method: str, request: Any) -> Any:
        from darktower.protocol.pb.v1.processing_grpc import MediaProcessingStub
        from darktower.servicekit import expect_peer
        from darktower.transport.rpc import call, open_rpc_channel

        tls = cluster_tls(self.cluster, ServiceRole.MH).client_context()

        async def go() -> Any:
            check = expect_peer(ServiceRole.MP, IDS[ServiceRole.MP])
            async with open_rpc_channel("127.0.0.1", self.port, tls=tls, check_peer=check) as ch:
                return await call(getattr(MediaProcessingStub(ch), method), request)

        return _run(go)

    def jobs(self) -> dict[str, Any] | None:
        """{job id: JobStatus}; None if it does not answer."""
        from darktower.protocol.pb.v1 import processing_pb2 as pb
        from darktower.transport.rpc import RpcUnavailable

        try:
            reply = self._call("ListJobs", pb.ListJobsRequest())
        except RpcUnavailable:
            return None
        return {job.job_id: job for job in reply.jobs}

    def start(self, requests: Sequence[Any]) -> None:
        """StartJob each of ``requests``; returns once every one is running."""
        for request in requests:
            self._call("StartJob", request)
        ids = {r.job_id for r in requests}
        deadline = time.monotonic() + START_S
        while True:
            jobs = self.jobs() or {}
            states = {jobs[i].state if i in jobs else "?" for i in ids}
            if states == {"running"}:
                return
            if "ended" in states or time.monotonic() > deadline:
                raise RuntimeError(f"jobs not running: {states}")
            time.sleep(WAIT_POLL_S)

    def stop(self, job_ids: Sequence[str]) -> None:
        from darktower.protocol.pb.v1 import common_pb2
        from darktower.protocol.pb.v1 import processing_pb2 as pb

        for job_id in job_ids:
            self._call("StopJob", pb.StopJobRequest(job_id=job_id, reason=common_pb2.VOLUNTARY))

    def close(self) -> None:
        self.proc.terminate()  # a drain: every job ends, its file finalized
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def media_stream(stream_id: str, kind: str, codec: str) -> dict[str, Any]:
    return {"stream_id": stream_id, "stream_type": kind, "codec": codec}


def register(
    mh_grpc: int,
    cluster: str,
    meeting: str,
    plan: dict[str, list[dict[str, Any]]],
    routes: dict[str, list[str]],
) -> dict[str, str]:
    """As the MC of the run's cluster: register every participant of ``plan`` ({pid: [media
    stream]}) in ``meeting`` on the MH at ``mh_grpc`` and route each stream of ``routes``
    ({stream id: [pid]}); returns {pid: media URL with token}."""
    from darktower.protocol.pb.v1 import common_pb2
    from darktower.protocol.pb.v1 import media_control_pb2 as mc_pb
    from darktower.protocol.pb.v1.media_control_grpc import MediaControlStub
    from darktower.transport.rpc import call, open_rpc_channel

    tls = cluster_tls(cluster, ServiceRole.MC).client_context()

    async def go() -> dict[str, str]:
        urls: dict[str, str] = {}
        async with open_rpc_channel("127.0.0.1", mh_grpc, tls=tls) as channel:
            stub = MediaControlStub(channel)
            for pid, streams in plan.items():
                reply = await call(
                    stub.RegisterParticipant,
                    mc_pb.RegisterParticipant(
                        participant_id=pid,
                        meeting_id=meeting,
                        streams=[
                            common_pb2.MediaStream(
                                stream_id=s["stream_id"],
                                stream_type=common_pb2.StreamType.Value(s["stream_type"]),
                                metadata=common_pb2.StreamMetadata(codec=s["codec"]),
                            )
                            for s in streams
                        ],
                    ),
                )
                urls[pid] = f"{reply.media_handler_url}?token={reply.connection_token}"
            for stream_id, to in routes.items():
                await call(
                    stub.RouteMedia,
                    mc_pb.RouteMediaCommand(
                        source_stream_id=stream_id,
                        destination_participant_ids=to,
                        meeting_id=meeting,
                    ),
                )
        return urls

    result: dict[str, str] = _run(go)
    return result


def start_publishers(
    groups: Sequence[Sequence[dict[str, str]]],
    media_path: str,
    cert_hash: str,
    *,
    cpus: set[int] | None = None,
    nice: int = 0,
) -> list[subprocess.Popen[str]]:
    """One publisher process per group of specs ({url, video, audio}); returns once every
    one is publishing."""
    procs = [
        spawn_script("--publish", json.dumps(list(g)), media_path, cert_hash, cpus=cpus, nice=nice)
        for g in groups
    ]
    for p in procs:
        assert p.stdout is not None and p.stdout.readline().strip() == "READY"
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("GO\n")
        p.stdin.flush()
    return procs


def stop_all(procs: Sequence[subprocess.Popen[str]]) -> None:
    for p in procs:
        p.kill()
    for p in procs:
        p.wait()


def new_id() -> str:
    return str(uuid.uuid4())
