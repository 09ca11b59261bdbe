"""Webhook URLs an API client may choose to hurt the GC with (docs/protocol.md §18.5): a host
name the resolver cannot encode is refused at registration, and one that gets past it (the
store written to directly) fails its delivery while the GC goes on serving; a send that raises
anything is a failed attempt, never the delivery task's end; the task's TLS context is built
once; an IPv6 address that embeds a non-global IPv4 address is not allowed; an MC cannot have
events delivered for a meeting it does not hold."""

from __future__ import annotations

import pathlib
import ssl
from collections.abc import Sequence
from typing import Any

import pytest
import trio
import trio.testing

from darktower.errors import InvalidRequest
from darktower.global_controller._webhook_http import address_allowed
from darktower.global_controller.webhooks import check_url, new_secret
from darktower.model import ClientId
from darktower.protocol.pb.v1 import registry_pb2 as reg_pb
from darktower.protocol.pb.v1.registry_grpc import ControllerRegistryStub
from darktower.transport.rpc import call
from tests.global_controller._harness import mc_channel, register_mc
from tests.global_controller._webhook_receiver import running_receiver
from tests.global_controller.test_webhook_delivery import FakeStore, _task
from tests.global_controller.test_webhooks import WAIT_S, hooks_stack

LONG_LABEL = "https://" + "a" * 64 + ".example.com/h"
EMPTY_LABEL = "http://a..b/"


def test_hosts_the_resolver_cannot_take_are_refused() -> None:
    for bad in (LONG_LABEL, EMPTY_LABEL, "http://.a/", "http://a.b../"):
        with pytest.raises(InvalidRequest):
            check_url(bad)
    for good in ("http://example.com./h", "https://" + "a" * 63 + ".example.com/", "http://[::1]/"):
        assert check_url(good) == good


def test_embedded_ipv4_addresses_are_judged_as_ipv4() -> None:
    for refused in ("2002:a00:1::1", "2002:7f00:1::1", "2002:c0a8:1::1", "::ffff:10.0.0.1"):
        assert not address_allowed(refused), refused
    assert address_allowed("2002:5db8:d822::1")  # 6to4 of 93.184.216.34
    assert address_allowed("::ffff:93.184.216.34")


async def test_an_unresolvable_name_fails_its_delivery_and_the_gc_goes_on(
    tmp_path: pathlib.Path,
) -> None:
    async with hooks_stack(tmp_path / "data") as hooks:
        refused = await hooks.api.request(
            "POST", "/api/v1/webhooks", token=hooks.token, json_body={"url": LONG_LABEL}
        )
        assert refused.status == 400 and refused.error_code == "INVALID_REQUEST"
        # Past the check (a row written before it existed): straight into the store.
        store = hooks.gc.controller.store
        forced = [
            (
                await store.create_webhook(
                    ClientId(hooks.client_id),
                    url,
                    ("meeting_created",),
                    new_secret=new_secret(),
                    max_per_client=10,
                )
            )[0]
            for url in (LONG_LABEL, EMPTY_LABEL)
        ]
        await hooks.create_meeting()
        with trio.fail_after(WAIT_S):
            await hooks.gc.controller.webhooks.wait_attempts(4)  # each tried, then again
        for webhook in forced:
            first = (await hooks.log(webhook.webhook_id))["deliveries"][-1]
            assert first["attempts"] >= 1 and first["status"] == "pending", first
            assert first["error"].startswith("cannot resolve"), first
        await hooks.create_meeting("still serving")
        listed = await hooks.api.request("GET", "/api/v1/webhooks", token=hooks.token)
        assert listed.status == 200 and len(listed.json()["webhooks"]) == 2


async def test_a_send_that_raises_is_a_failed_attempt(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = FakeStore()
    store.add(1)
    store.add(2, at=1.0)
    contexts: list[Any] = []

    async def send(url: str, headers: Sequence[tuple[str, str]], body: bytes, **kw: Any) -> Any:
        contexts.append(kw["ssl_context"])
        await trio.lowlevel.checkpoint()
        raise UnicodeError("label empty or too long")

    task, webhooks = _task(store, send)
    async with trio.open_nursery() as nursery:
        await nursery.start(task.run)
        await webhooks.wait_attempts(2)  # the task outlived the first
        nursery.cancel_scope.cancel()
    assert [(d.delivery_id, a.error) for d, a in store.finished] == [
        ("d1", "attempt failed: UnicodeError"),
        ("d2", "attempt failed: UnicodeError"),
    ]
    # One TLS context for every attempt, made with the task (not per attempt).
    assert isinstance(contexts[0], ssl.SSLContext) and contexts[0] is contexts[1]


async def test_an_mc_reporting_for_a_meeting_it_does_not_hold_delivers_nothing(
    tmp_path: pathlib.Path,
) -> None:
    async with running_receiver() as receiver, hooks_stack(tmp_path / "data") as hooks:
        hook = await hooks.register(receiver.url, ["meeting_started"])
        meeting_id = (await hooks.create_meeting())["meeting_id"]  # on mc-1, the only MC
        await register_mc(hooks.gc.grpc_port, "mc-2", "127.0.0.1:9")
        forged = reg_pb.MeetingEvent(
            event_id="forged-1",
            meeting_id=meeting_id,
            meeting_started=reg_pb.MeetingStartedEvent(),
        )
        async with mc_channel(hooks.gc.grpc_port, "mc-2") as channel:
            await call(
                ControllerRegistryStub(channel).ReportEvents,
                reg_pb.MeetingEventBatch(controller_id="mc-2", events=[forged]),
                deadline_s=10,
            )
        assert (await hooks.log(hook["webhook_id"]))["deliveries"] == []
        # The meeting's own MC reports the same: delivered.
        await hooks.report([forged])
        with trio.fail_after(WAIT_S):
            got = await receiver.next()
        assert got.headers["x-darktower-event"] == "meeting_started"
        (delivery,) = (await hooks.log(hook["webhook_id"]))["deliveries"]
        assert delivery["event_id"] == "forged-1" and delivery["status"] == "delivered"
