"""Two GC replicas on one PostgreSQL deliver one webhook's events, each once (docs/protocol.md
§18.5): both replicas' delivery tasks claim from the shared queue, and a webhook's delivery
in flight is leased to one of them."""

from __future__ import annotations

import json
import pathlib

import httpx
import pytest
import trio

from darktower.global_controller import keys
from darktower.global_controller.clients import add_client
from darktower.global_controller.webhooks import Webhooks
from darktower.protocol.pb.v1 import registry_pb2 as reg_pb
from tests.global_controller._harness import (
    H1Api,
    StandInMC,
    gc_settings,
    register_mc,
    running_gc,
    running_stand_in_mc,
)
from tests.global_controller._webhook_receiver import running_receiver
from tests.global_controller.test_webhooks import WAIT_S, report

EVENTS = 40


async def _attempts_reach(count: int, *replicas: Webhooks) -> None:
    while sum(w.attempts for w in replicas) < count:
        async with trio.open_nursery() as nursery:

            async def one(webhooks: Webhooks) -> None:
                await webhooks.wait_attempts(webhooks.attempts + 1)
                nursery.cancel_scope.cancel()

            for webhooks in replicas:
                nursery.start_soon(one, webhooks)


@pytest.mark.postgres
async def test_two_replicas_deliver_each_event_once(
    tmp_path: pathlib.Path, postgres_dsn: str
) -> None:
    shared = tmp_path / "keys"
    keys.load_or_create_signing_key(shared / "join.pem")
    keys.load_or_create_signing_key(shared / "access.pem")
    common = {
        "database": postgres_dsn,
        "join_key_file": str(shared / "join.pem"),
        "access_key_file": str(shared / "access.pem"),
        "webhooks_allow_private": True,
    }
    a_settings = gc_settings(tmp_path / "a", **common)
    b_settings = gc_settings(tmp_path / "b", **common)
    client_id, secret = await add_client(a_settings, "alice")
    async with (
        running_receiver() as receiver,
        running_stand_in_mc(StandInMC()) as endpoint,
        running_gc(a_settings) as (a, _),
        running_gc(b_settings) as (b, _),
        httpx.AsyncClient(base_url=a.url, verify=False) as http,
    ):
        await register_mc(a.grpc_port, "mc-1", endpoint)
        api = H1Api(http)
        token = await api.token(client_id, secret)
        hook = await api.request(
            "POST",
            "/api/v1/webhooks",
            token=token,
            json_body={"url": receiver.url, "events": ["participant_joined"]},
        )
        assert hook.status == 201, hook.body
        created = await api.request(
            "POST", "/api/v1/meetings", token=token, json_body={"display_name": "m"}
        )
        meeting_id = created.json()["meeting_id"]
        who = reg_pb.ParticipantEvent(participant_id="p-1", name="Ada")
        # Half through each replica, in batches of 5, so both delivery tasks are woken.
        for n in range(0, EVENTS, 5):
            batch = [
                reg_pb.MeetingEvent(event_id=f"e{m}", meeting_id=meeting_id, participant_joined=who)
                for m in range(n, n + 5)
            ]
            await report((a if n % 10 else b).grpc_port, batch)
        replicas = (a.controller.webhooks, b.controller.webhooks)
        with trio.fail_after(WAIT_S):
            await _attempts_reach(EVENTS, *replicas)
        ids = [json.loads(r.body)["event_id"] for r in receiver.requests]
        assert sorted(ids) == sorted(f"e{m}" for m in range(EVENTS))  # each once
        assert sum(w.attempts for w in replicas) == EVENTS  # and no other attempt
        log = await api.request(
            "GET", f"/api/v1/webhooks/{hook.json()['webhook_id']}/deliveries", token=token
        )
        assert {(d["status"], d["attempts"]) for d in log.json()["deliveries"]} == {
            ("delivered", 1)
        }
