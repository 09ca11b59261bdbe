"""The service around the handler: ops pages, registration with the MC, drain, launcher."""

from __future__ import annotations

import json
import subprocess
import sys
from functools import partial

import pytest
import trio

from darktower.errors import CapacityExceeded, NotFound
from darktower.media_handler._limits import DRAIN_CLOSE_SHARE
from darktower.protocol.pb.v1 import meeting_control_pb2 as mtg_pb
from darktower.protocol.pb.v1.meeting_control_grpc import MeetingControlBase
from darktower.transport.rpc import rpc_service, serve_rpc
from tests._cluster import stack_cluster

from ._harness import WAIT_S, new_id, open_harness


async def _get(url: str) -> tuple[int, str]:
    host_port = url.split("//")[1].split("/")[0]
    path = "/" + url.split("//")[1].split("/", 1)[1]
    host, port = host_port.rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:
        await stream.send_all(f"GET {path} HTTP/1.0\r\nhost: {host}\r\n\r\n".encode())
        data = b""
        while chunk := await stream.receive_some():
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode()


async def test_ops_pages() -> None:
    meeting = new_id()
    async with open_harness() as h:
        await h.register(meeting, "p")
        ops = h.running.ops_url
        with trio.fail_after(WAIT_S):
            assert (await _get(ops + "/healthz"))[0] == 200
            assert (await _get(ops + "/readyz"))[0] == 200  # no MC configured: ready at once
            status, metrics = await _get(ops + "/metrics")
            assert status == 200
            assert "darktower_mh_rooms 1" in metrics
            assert "darktower_mh_participants 1" in metrics
            status, tree = await _get(ops + "/debug/tree")
            assert status == 200 and json.loads(tree)["counts"]["meetings"] == 1
            assert (await _get(ops + "/nope"))[0] == 404


class FakeMC:
    """The MC's side of registration: records calls, forgets the MH once."""

    def __init__(self) -> None:
        self.registered: list[mtg_pb.RegisterMediaHandler] = []
        self.heartbeats: list[mtg_pb.MediaHandlerHeartbeat] = []
        self.changed = trio.Event()
        self.forget_once = True

    def _changed(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    async def RegisterMediaHandler(
        self, request: mtg_pb.RegisterMediaHandler
    ) -> mtg_pb.RegisterMediaHandlerResponse:
        self.registered.append(request)
        self._changed()
        return mtg_pb.RegisterMediaHandlerResponse(heartbeat_interval_ms=20)

    async def MediaHandlerHeartbeat(
        self, request: mtg_pb.MediaHandlerHeartbeat
    ) -> mtg_pb.MediaHandlerHeartbeatResponse:
        self.heartbeats.append(request)
        self._changed()
        if self.forget_once:
            self.forget_once = False
            raise NotFound("unknown handler")
        return mtg_pb.MediaHandlerHeartbeatResponse()

    async def AssignMeeting(self, request: object) -> object:
        raise NotImplementedError

    async def EndMeeting(self, request: object) -> object:
        raise NotImplementedError

    async def KickParticipant(self, request: object) -> object:
        raise NotImplementedError

    async def ModerateParticipant(self, request: object) -> object:
        raise NotImplementedError


async def test_registers_with_the_mc_heartbeats_and_registers_again() -> None:
    mc = FakeMC()
    meeting = new_id()
    async with trio.open_nursery() as nursery:
        tls = stack_cluster().tls("mc", "mc-1").server_context()
        port = await nursery.start(
            partial(serve_rpc, [rpc_service(MeetingControlBase, mc)], "127.0.0.1", 0, tls=tls)
        )
        async with open_harness(mc_grpc=f"127.0.0.1:{port}", handler_id="mh-test") as h:
            await h.register(meeting, "p")
            with trio.fail_after(WAIT_S):
                while len(mc.registered) < 2 or len(mc.heartbeats) < 2:
                    await mc.changed.wait()
            first = mc.registered[0]
            assert first.handler_id == "mh-test"
            assert first.media_url == h.running.media_url
            assert first.endpoint.endswith(f":{h.running.grpc_address[1]}")
            assert mc.heartbeats[-1].load.participants == 1
            assert mc.heartbeats[-1].load.rooms == 1
            status, _ = await _ops(h)
            assert status == 200
        nursery.cancel_scope.cancel()


async def _ops(h) -> tuple[int, str]:  # type: ignore[no-untyped-def]
    return await _get(h.running.ops_url + "/readyz")


async def test_shutdown_without_an_mc_closes_what_is_left_and_ends_no_meeting() -> None:
    meeting = new_id()
    async with open_harness(drain_grace_s=2.0) as h:
        url = await h.register(meeting, "p")
        async with h.client(url) as media:
            await h.connected(meeting, "p")
            h.shutdown.set()
            with trio.fail_after(WAIT_S):
                await media.session.wait_closed()
            # The meeting goes on elsewhere: a close without a reason, so the client asks its
            # MC for media again instead of leaving.
            assert media.session.peer_close_code == 0
            assert media.lost and media.removed_reason is None
        with trio.fail_after(WAIT_S):
            await h.handler.tree.wait_closed()
        assert h.handler.rooms == {}


async def test_a_draining_mh_tells_its_mc_takes_no_room_and_exits_once_nobody_is_left() -> None:
    mc = FakeMC()
    mc.forget_once = False
    meeting = new_id()
    async with trio.open_nursery() as nursery:
        tls = stack_cluster().tls("mc", "mc-1").server_context()
        port = await nursery.start(
            partial(serve_rpc, [rpc_service(MeetingControlBase, mc)], "127.0.0.1", 0, tls=tls)
        )
        # A long grace: the MH must exit because its participant left, not at the deadline.
        grace_s = 60.0
        async with open_harness(
            mc_grpc=f"127.0.0.1:{port}", handler_id="mh-test", drain_grace_s=grace_s
        ) as h:
            url = await h.register(meeting, "p")
            async with h.client(url) as media:
                await h.connected(meeting, "p")
                beats = len(mc.heartbeats)
                h.shutdown.set()
                with trio.fail_after(WAIT_S):  # at once, not at the next interval
                    while not [b for b in mc.heartbeats[beats:] if b.draining]:
                        await mc.changed.wait()
                with pytest.raises(CapacityExceeded):
                    await h.register(new_id(), "q")  # no new room
                assert media.session.end is None  # served until the client moves
            started = trio.current_time()
            with trio.fail_after(WAIT_S):
                await h.handler.tree.wait_closed()
            assert trio.current_time() - started < grace_s * (1 - DRAIN_CLOSE_SHARE)
        nursery.cancel_scope.cancel()


def test_launcher_help_lists_every_option() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "darktower.media", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for flag in (
        "--port",
        "--grpc-port",
        "--ops-port",
        "--mc-grpc",
        "--grpc-host",
        "--cluster-cert",
        "--budget-in-bytes-per-s",
        "--drain-grace-s",
    ):
        assert flag in out


def test_launcher_runs_and_stops_gracefully_on_sigterm() -> None:
    import signal

    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "darktower.media",
            "--port=0",
            "--grpc-port=0",
            "--ops-port=0",
            "--drain-grace-s=1",
            *stack_cluster().argv("mh", "mh-launcher"),
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        for line in proc.stderr:  # JSON lines; ends at EOF if the process dies
            if "media handler running" in line:
                assert "/v1/media" in json.loads(line)["media_url"]
                break
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=WAIT_S) == 0
    finally:
        proc.kill()
        proc.wait()
