"""Two GC replicas as separate processes (``python -m darktower.global``) on one real
PostgreSQL, sharing their signing keys, with a stand-in MC registered through one of them.
Load creates and reads meetings through both; ``kill -9`` of one replica in the middle loses
no meeting: every meeting either replica answered 201 for is there, active, through the
other, which kept answering throughout (docs/architecture.md §1)."""

from __future__ import annotations

import pathlib
import signal
from typing import Any

import httpx
import pytest
import trio

from darktower.global_controller import keys
from darktower.global_controller.clients import add_client
from tests._cluster import stack_cluster
from tests.global_controller._harness import (
    StandInMC,
    gc_settings,
    register_mc,
    running_stand_in_mc,
)

from ._processes import ServiceProcess, open_service, wait_ready

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

WORKERS = 6
KILL_AFTER = 30  # meetings created (through both) before replica A is killed
AFTER_KILL = 10  # meetings each worker creates through B after the kill
TEST_DEADLINE_S = 120.0


def _grpc_port(service: ServiceProcess) -> int:
    return int(str(service.ready["grpc"]).rpartition(":")[2])


async def test_kill_9_of_a_replica_loses_no_meeting(
    tmp_path: pathlib.Path, postgres_dsn: str
) -> None:
    shared = tmp_path / "keys"
    keys.load_or_create_signing_key(shared / "join.pem")
    keys.load_or_create_signing_key(shared / "access.pem")
    common = {
        "database": postgres_dsn,
        "join_key_file": str(shared / "join.pem"),
        "access_key_file": str(shared / "access.pem"),
    }
    client_id, secret = await add_client(gc_settings(tmp_path / "a", **common), "load")

    def argv(name: str) -> list[str]:
        options = {
            **common,
            "data_dir": str(tmp_path / name),
            "port": "0",
            "grpc_port": "0",
            "rate_limit_per_min": "1000000",  # the load is one client
            "max_active_meetings_per_client": "0",
            "heartbeat_interval_s": "60",  # the stand-in MC stays alive without heartbeats
        }
        flags = [f"--{k.replace('_', '-')}={v}" for k, v in options.items()]
        return flags + stack_cluster().argv("gc", f"gc-{name}")

    mc = StandInMC()
    with trio.fail_after(TEST_DEADLINE_S):
        async with (
            running_stand_in_mc(mc, "mc-1") as endpoint,
            open_service(
                "gc-a",
                "darktower.global",
                argv("a"),
                ready_message="global controller serving",
                cwd=str(tmp_path),
            ) as a,
            open_service(
                "gc-b",
                "darktower.global",
                argv("b"),
                ready_message="global controller serving",
                cwd=str(tmp_path),
            ) as b,
            httpx.AsyncClient(verify=False, trust_env=False, timeout=10.0) as http,
        ):
            await wait_ready(f"{a.ready['url']}/readyz", a, verify=False)
            await wait_ready(f"{b.ready['url']}/readyz", b, verify=False)
            await register_mc(_grpc_port(a), "mc-1", endpoint)  # through A only
            token = (
                await http.post(
                    f"{b.ready['url']}/api/v1/auth/token",
                    json={
                        "grant_type": "client_credentials",
                        "client_id": client_id,
                        "client_secret": secret,
                    },
                )
            ).json()["access_token"]
            auth = {"Authorization": f"Bearer {token}"}
            created: list[str] = []
            failures: dict[str, int] = {"a": 0, "b": 0}
            enough = trio.Event()
            killed = trio.Event()

            async def create(url: str) -> str | None:
                reply = await http.post(
                    f"{url}/api/v1/meetings", json={"display_name": "load"}, headers=auth
                )
                assert reply.status_code == 201, reply.text
                meeting_id: str = reply.json()["meeting_id"]
                created.append(meeting_id)
                read = await http.get(f"{url}/api/v1/meetings/{meeting_id}")
                assert read.status_code == 200 and read.json()["status"] == "active"
                if len(created) >= KILL_AFTER:
                    enough.set()
                return meeting_id

            async def worker(index: int) -> None:
                after_kill = 0
                turn = index
                while after_kill < AFTER_KILL:
                    name, service = ("a", a) if turn % 2 == 0 else ("b", b)
                    turn += 1
                    was_killed = killed.is_set()
                    try:
                        await create(service.ready["url"])
                    except httpx.TransportError:
                        assert name == "a", "replica B stopped answering"
                        failures[name] += 1
                        await trio.lowlevel.checkpoint()
                        continue
                    if was_killed and name == "b":
                        after_kill += 1

            async def killer() -> None:
                await enough.wait()
                a.process.send_signal(signal.SIGKILL)
                await a.process.wait()
                killed.set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(killer)
                for index in range(WORKERS):
                    nursery.start_soon(worker, index)

            assert a.process.returncode == -signal.SIGKILL
            assert failures["a"] > 0 and failures["b"] == 0  # A was killed under load
            assert len(created) >= KILL_AFTER + WORKERS * AFTER_KILL
            # Every meeting acknowledged by either replica is there, through the survivor.
            for meeting_id in created:
                info = await http.get(f"{b.ready['url']}/api/v1/meetings/{meeting_id}")
                assert info.status_code == 200 and info.json()["status"] == "active", info.text
            listed: Any = (
                await http.get(
                    f"{b.ready['url']}/api/v1/meetings", params={"active": "true"}, headers=auth
                )
            ).json()
            assert set(created) <= {m["meeting_id"] for m in listed["meetings"]}
            assert {m.meeting_id for m in mc.assigned} >= set(created)
            assert (await http.get(f"{b.ready['url']}/readyz")).status_code == 200
