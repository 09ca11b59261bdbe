"""Webhooks on the real stack (docs/protocol.md §18.5): a real GC, MC and MH; a participant
joins and leaves over real QUIC; the MC reports the meeting's events to the GC
(``ReportEvents``, over the cluster's mutual TLS) and the GC delivers them, signed, to a
receiver started by the test."""

from __future__ import annotations

import json
import pathlib

import httpx
import trio

from darktower.client import open_signaling
from tests._stack import open_services
from tests.global_controller._harness import H1Api
from tests.global_controller._webhook_receiver import running_receiver
from tests.global_controller.test_webhooks import WAIT_S, verify


async def test_a_join_and_a_leave_reach_the_receiver(tmp_path: pathlib.Path) -> None:
    gc = {"webhooks_allow_private": True}
    async with (
        running_receiver() as receiver,
        open_services(tmp_path / "data", gc=gc, mc={}, mh={}) as stack,
        httpx.AsyncClient(base_url=stack.api_url, verify=False) as http,
    ):
        api = H1Api(http)
        token = await api.token(stack.client_id, stack.client_secret)
        registered = await api.request(
            "POST", "/api/v1/webhooks", token=token, json_body={"url": receiver.url}
        )
        assert registered.status == 201, registered.body
        secret = registered.json()["secret"]
        created = await stack.create_meeting("standup")
        async with open_signaling(
            stack.signal_url,
            meeting_id=created.meeting_id,
            join_token=created.join_token,
            participant_name="Ada",
            server_certificate_hashes=stack.pins,
        ) as host:
            participant_id = host.join_response.participant_id
        got: list[dict[str, object]] = []
        with trio.fail_after(WAIT_S):
            while len(got) < 4:
                request = await receiver.next()
                assert verify(secret, request.body, request.headers["x-darktower-signature"])
                got.append(json.loads(request.body))
        assert {b["meeting_id"] for b in got} == {created.meeting_id}
        assert [b["event"] for b in got] == [
            "meeting_created",
            "meeting_started",
            "participant_joined",
            "participant_left",
        ]
        # The name is the one the MC gives (the host's join token from the create names none).
        name = got[2]["data"]["name"]  # type: ignore[index]
        joined = {"participant_id": participant_id, "name": name, "host": True}
        assert got[2]["data"] == joined and name
        assert got[3]["data"] == {**joined, "reason": "VOLUNTARY"}
