"""The join benchmark's server processes (benchmarks/join.py): a Meeting Controller on a chosen
QUIC core, with a bare WebTransport echo route on a second port of the same core for the
baseline; the Media Handler stand-in answering its MediaControl calls, in a process of its own;
and the helpers the driver reads those processes with."""

from __future__ import annotations

import json
import logging
import os
import pathlib
import subprocess
import sys
from typing import Any

# The script whose command line runs the server process (join.py --serve ...).
SCRIPT = pathlib.Path(__file__).with_name("join.py")


def serve_stand_in_mh(certfile: str) -> None:
    """The Media Handler stand-in's process: print {port} once serving its MediaControl calls
    on mutual TLS (the cluster of ``certfile``'s directory); stop at a line on stdin."""
    import trio

    from benchmarks._cluster import cluster_tls
    from darktower.protocol.pb.v1 import media_control_pb2 as mh_pb
    from darktower.protocol.pb.v1.media_control_grpc import MediaControlBase
    from darktower.servicekit import ServiceRole
    from darktower.transport.rpc import open_rpc_loop, rpc_service, serve_rpc

    class StandInMH:
        async def RegisterParticipant(self, request: Any) -> Any:
            await trio.lowlevel.checkpoint()
            return mh_pb.RegisterParticipantResponse(connection_token="t", media_handler_url="u")

        async def RouteMedia(self, request: Any) -> Any:
            await trio.lowlevel.checkpoint()
            return mh_pb.RouteMediaResponse()

        async def RemoveParticipant(self, request: Any) -> Any:
            await trio.lowlevel.checkpoint()
            return mh_pb.RemoveParticipantResponse()

        async def RemoveStream(self, request: Any) -> Any:
            await trio.lowlevel.checkpoint()
            return mh_pb.RemoveStreamResponse()

        async def StartRecording(self, request: Any) -> Any:
            await trio.lowlevel.checkpoint()
            return mh_pb.StartRecordingResponse(recording_id=request.recording_id)

        async def StopRecording(self, request: Any) -> Any:
            await trio.lowlevel.checkpoint()
            return mh_pb.StopRecordingResponse()

        async def Telemetry(self, request: Any) -> Any:
            await trio.sleep_forever()
            yield mh_pb.TelemetryEvent()

    # The MC's process ends first: the stand-in's writes to its closed connections are
    # expected then, and asyncio would warn of each past the fifth.
    logging.getLogger("asyncio").setLevel(logging.ERROR)

    async def main() -> None:
        async with open_rpc_loop(), trio.open_nursery() as nursery:
            mh_tls = cluster_tls(os.path.dirname(certfile), ServiceRole.MH).server_context()
            port = await nursery.start(
                lambda task_status: serve_rpc(
                    [rpc_service(MediaControlBase, StandInMH())],
                    "127.0.0.1",
                    0,
                    tls=mh_tls,
                    task_status=task_status,
                )
            )
            print(json.dumps({"port": port}), flush=True)
            await trio.to_thread.run_sync(sys.stdin.readline)
            nursery.cancel_scope.cancel()

    trio.run(main)


def serve(certfile: str, keyfile: str, pubkey: str, core: str) -> None:
    """Print {signal, grpc, echo, mh_pid} once serving; stop at a line on stdin. The MC's
    Media Handler is a stand-in in a process of its own (``serve_stand_in_mh``), as a real MH
    is: its side of the MediaControl calls (1.5-2.2 ms of CPU per join, 15-17 % of the two
    processes' together) is not the MC's."""
    import trio

    from benchmarks._cluster import cluster_options
    from darktower.meeting_controller import Settings
    from darktower.meeting_controller import serve as serve_mc
    from darktower.servicekit import ServiceRole
    from darktower.transport import (
        Route,
        ServerConfig,
        TlsCredentials,
        TransportLimits,
        WebTransportServer,
    )
    from darktower.transport.rpc import open_rpc_loop

    async def echo(session: Any, context: object) -> None:
        stream = await session.accept_stream()
        await stream.send_all(await stream.receive_some())
        await session.wait_closed()

    async def main(mh: Child) -> None:
        async with open_rpc_loop(), trio.open_nursery() as nursery:
            cluster = os.path.dirname(certfile)  # internal gRPC is mutual TLS
            mh_port = mh.info["port"]
            settings = Settings(
                port=0,
                grpc_port=0,
                ops_port=0,
                certfile=certfile,
                keyfile=keyfile,
                **cluster_options(cluster, ServiceRole.MC),
                join_public_key_file=pubkey,
                media_handler=f"127.0.0.1:{mh_port}",
                log_level="warning",
                quic_core=core,
            )
            # The MC in a scope of its own, cancelled first: its participants' removal at the
            # stand-in MH still finds it (it logged a warning per participant otherwise).
            mc_scope, mc_done = trio.CancelScope(), trio.Event()

            async def mc(task_status: trio.TaskStatus[Any]) -> None:
                try:
                    with mc_scope:
                        await serve_mc(settings, shutdown=trio.Event(), task_status=task_status)
                finally:
                    mc_done.set()

            running = await nursery.start(mc)
            tls = TlsCredentials.from_files(certfile, keyfile)
            echo_server = WebTransportServer(
                ServerConfig(tls=tls, limits=TransportLimits(quic_core=core)),
                {"/echo": Route(echo)},
            )
            _, echo_port = await nursery.start(echo_server.run)
            print(
                json.dumps(
                    {
                        "signal": running.signal_url,
                        "grpc": running.grpc_address[1],
                        "echo": f"https://127.0.0.1:{echo_port}/echo",
                        "mh_pid": mh.pid,
                    }
                ),
                flush=True,
            )
            await trio.to_thread.run_sync(sys.stdin.readline)
            mc_scope.cancel()
            await mc_done.wait()
            nursery.cancel_scope.cancel()

    mh = Child("--serve-mh", certfile)
    try:
        trio.run(main, mh)
    finally:
        mh.stop()


def rss_kb(pid: int) -> int:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu_s(pid: int) -> float:
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Child:
    """A process of this benchmark running ``join.py *argv``; ``info``: the JSON object it
    prints once serving."""

    def __init__(self, *argv: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(SCRIPT), *argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert self.proc.stdout is not None
            self.info: dict[str, Any] = json.loads(self.proc.stdout.readline())
        except BaseException:
            self.proc.kill()
            self.proc.wait()
            raise
        self.pid = self.proc.pid

    def stop(self) -> None:
        """Ask it to stop (a line on stdin); kill it if it has not within 30 s."""
        if self.proc.poll() is None and self.proc.stdin is not None:
            try:
                self.proc.stdin.write("\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=30)
            except (subprocess.TimeoutExpired, BrokenPipeError):
                pass
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class Server(Child):
    """An MC process on QUIC core ``core``; ``info``: its {signal, grpc, echo, mh_pid}."""

    def __init__(self, certfile: str, keyfile: str, pubkey: str, core: str) -> None:
        self.core = core
        super().__init__("--serve", certfile, keyfile, pubkey, core)
