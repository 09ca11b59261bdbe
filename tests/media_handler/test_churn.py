"""1,000 participants join and leave (half leave by closing, half are removed by the MC):
nothing is left behind: rooms, members, subscriptions, tree scopes, transport sessions."""

from __future__ import annotations

import trio
import trio.testing

from darktower.frames import FrameType
from darktower.model import LeaveReason
from darktower.protocol.pb.v1 import media_control_pb2 as mc_pb
from darktower.transport import open_quic_connection
from darktower.transport.rpc import open_stream_call

from ._harness import WAIT_S, audio, new_id, open_harness

PARTICIPANTS = 1000
CONNECTIONS = 10  # clients share QUIC connections: many sessions on each
MEETINGS = 20


async def test_thousand_participants_join_and_leave_without_residue() -> None:
    meetings = [new_id() for _ in range(MEETINGS)]
    voluntary = 0
    # Voluntary leaves without an MC to remove them: each is forgotten after the media grace.
    async with open_harness(media_grace_s=0.5) as h:
        async with open_stream_call(h.stub.Telemetry, mc_pb.TelemetryRequest()) as events:
            with trio.fail_after(WAIT_S):
                await h.handler.telemetry_hub.wait_listeners(1)

            async def worker(w: int) -> None:
                nonlocal voluntary
                host, port = h.running.media_address
                async with open_quic_connection(
                    host, port, server_certificate_hashes=[h.running.certificate_sha256]
                ) as conn:
                    for i in range(PARTICIPANTS // CONNECTIONS):
                        n = w * 1000 + i
                        meeting = meetings[n % MEETINGS]
                        mic = new_id()
                        pid = f"p{n}"
                        url = await h.register(meeting, pid, [audio(mic)])
                        async with h.client(url, connection=conn) as media:
                            await h.connected(meeting, pid)
                            pub = await media.publish(mic)
                            await pub.send_frame(FrameType.AUDIO, b"hello")
                            if n % 2:
                                await h.remove(meeting, pid, LeaveReason.KICKED)
                            else:
                                voluntary += 1
                                await media.aclose()

            with trio.fail_after(60):
                async with trio.open_nursery() as nursery:
                    for w in range(CONNECTIONS):
                        nursery.start_soon(worker, w)
                # Every voluntary leave reaches the MC as ParticipantDisconnected.
                left = 0
                while left < voluntary:
                    event = await events.__anext__()
                    if event.WhichOneof("event") == "participant_disconnected":
                        left += 1
        for meeting in list(h.handler.rooms):
            await h.handler.rooms[meeting].scope.wait_closed()
        await trio.testing.wait_all_tasks_blocked(cushion=0.05)
        handler = h.handler
        assert handler.rooms == {}
        assert handler.load() == (0, 0, 0)
        assert handler.tree.snapshot()["counts"] == {"meetings": 0, "participants": 0, "streams": 0}
        assert handler.tree.meetings == {}
        handler.refresh_gauges()
        assert handler.metrics.subscriptions.value() == 0
        assert handler.metrics.connected.value() == 0
        server = h.running.server
        assert server.sessions == set() and server.session_tasks == 0
