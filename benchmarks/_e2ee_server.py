"""The end-to-end encryption benchmark's server process (benchmarks/e2ee.py --serve): the real
Meeting Controller and Media Handler in one process on 127.0.0.1, internal gRPC over mutual TLS
with a cluster made in memory (as python -m darktower makes it), the MH's byte-rate budgets
lifted (a saturating publisher measures the clients, not a budget), every meeting of the run
assigned as the GC would. Prints the URLs as one JSON line; drains when a line arrives on
stdin."""

from __future__ import annotations

import json
import sys
from typing import Any

import trio

BUDGET = 1 << 30  # bytes/s: no participant is held back by the MH's budgets


def serve(certfile: str, keyfile: str, pubkey: str, meetings_json: str) -> None:
    """``meetings_json``: {meeting id: enable_e2e_encryption}."""
    from darktower import media_handler, meeting_controller
    from darktower.__main__ import dev_cluster
    from darktower.protocol.pb.v1 import meeting_control_pb2 as mtg_pb
    from darktower.protocol.pb.v1.meeting_control_grpc import MeetingControlStub
    from darktower.transport.rpc import call, open_rpc_channel, open_rpc_loop

    meetings: dict[str, bool] = json.loads(meetings_json)
    common: dict[str, Any] = dict(
        host="127.0.0.1", port=0, grpc_port=0, ops_port=0, certfile=certfile, keyfile=keyfile
    )
    common.update(log_level="warning", log_json=False, drain_grace_s=2.0)
    mc_settings = meeting_controller.Settings(**common, join_public_key_file=pubkey)
    cluster = {str(role): tls for role, tls in dev_cluster().items()}

    async def main() -> None:
        async with open_rpc_loop(), trio.open_nursery() as nursery:
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
                **common,
                mc_grpc=f"127.0.0.1:{mc.grpc_address[1]}",
                budget_in_bytes_per_s=BUDGET,
                budget_out_bytes_per_s=BUDGET,
            )
            mh = await nursery.start(
                lambda task_status: media_handler.serve(
                    mh_settings, shutdown=stop_mh, task_status=task_status, cluster=cluster["mh"]
                )
            )
            await mc.controller.mhs.wait_for(mh.handler_id)
            gc_tls = cluster["gc"].client_context()  # AssignMeeting is the GC's call
            async with open_rpc_channel(*mc.grpc_address, tls=gc_tls) as channel:
                stub = MeetingControlStub(channel)
                for meeting_id, encrypted in meetings.items():
                    config = mtg_pb.MeetingConfig(
                        max_participants=100, enable_e2e_encryption=encrypted
                    )
                    await call(
                        stub.AssignMeeting,
                        mtg_pb.AssignMeeting(meeting_id=meeting_id, config=config),
                    )
            info = {"signal": mc.signal_url, "media": mh.media_url, "mh_ops": mh.ops_url}
            print(json.dumps(info), flush=True)
            await trio.to_thread.run_sync(sys.stdin.readline)
            stop_mc.set()
            await mc_done.wait()
            stop_mh.set()

    trio.run(main)
