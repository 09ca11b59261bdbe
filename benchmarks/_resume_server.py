"""The reconnection benchmark's server process (benchmarks/resume.py --serve): a Meeting Controller
and a Media Handler at their default settings, the benchmark's meeting assigned; prints their URLs
and drains as python -m darktower does when a line arrives on stdin."""

from __future__ import annotations

import json
import sys
from typing import Any

import trio

from benchmarks._resume_peers import MEETING


# --- the server process -------------------------------------------------------------------
def serve(certfile: str, keyfile: str, pubkey: str) -> None:
    from darktower import media_handler, meeting_controller
    from darktower.__main__ import dev_cluster
    from darktower.protocol.pb.v1 import meeting_control_pb2 as mtg_pb
    from darktower.protocol.pb.v1.meeting_control_grpc import MeetingControlStub
    from darktower.transport.rpc import call, open_rpc_channel, open_rpc_loop

    common: dict[str, Any] = dict(
        host="127.0.0.1", port=0, grpc_port=0, ops_port=0, certfile=certfile, keyfile=keyfile
    )
    common.update(log_level="warning", log_json=False, drain_grace_s=2.0)
    mc_settings = meeting_controller.Settings(**common, join_public_key_file=pubkey)
    # Internal gRPC is mutual TLS: a cluster made in memory, as python -m darktower makes it.
    cluster = {str(role): tls for role, tls in dev_cluster().items()}

    async def main() -> None:
        async with open_rpc_loop(), trio.open_nursery() as nursery:
            # Drained as python -m darktower drains: the MC first, then the MH.
            stop_mc, stop_mh, mc_done = trio.Event(), trio.Event(), trio.Event()

            async def run_mc(task_status: trio.TaskStatus[Any]) -> None:
                try:
                    await meeting_controller.serve(
                        mc_settings,
                        shutdown=stop_mc,
                        task_status=task_status,
                        cluster=cluster["mc"],
                    )
                finally:
                    mc_done.set()

            mc = await nursery.start(run_mc)
            mh_settings = media_handler.Settings(
                **common, mc_grpc=f"127.0.0.1:{mc.grpc_address[1]}"
            )
            mh = await nursery.start(
                lambda task_status: media_handler.serve(
                    mh_settings, shutdown=stop_mh, task_status=task_status, cluster=cluster["mh"]
                )
            )
            await mc.controller.mhs.wait_for(mh.handler_id)
            gc_tls = cluster["gc"].client_context()  # AssignMeeting is the GC's call
            async with open_rpc_channel(*mc.grpc_address, tls=gc_tls) as channel:
                await call(
                    MeetingControlStub(channel).AssignMeeting,
                    mtg_pb.AssignMeeting(
                        meeting_id=MEETING, config=mtg_pb.MeetingConfig(max_participants=100)
                    ),
                )
            info = {"signal": mc.signal_url, "media": mh.media_url, "mh_ops": mh.ops_url}
            print(json.dumps(info), flush=True)
            await trio.to_thread.run_sync(sys.stdin.readline)
            stop_mc.set()
            await mc_done.wait()
            stop_mh.set()

    trio.run(main)
