"""The webhooks' REST routes (docs/protocol.md §18.5) and errors (§1.2) on a real GC, the
checks of ReportEvents, and the pieces without I/O: signatures, URLs, addresses, backoff."""

from __future__ import annotations

import hashlib
import hmac
import pathlib
import time

import pytest

from darktower.errors import InvalidRequest
from darktower.global_controller._webhook_http import address_allowed
from darktower.global_controller.clients import add_client
from darktower.global_controller.store import retry_delay_s
from darktower.global_controller.webhooks import EVENT_NAMES, check_url, signature
from darktower.protocol.pb.v1 import registry_pb2 as reg_pb
from tests.global_controller._harness import Reply
from tests.global_controller.test_webhooks import Hooks, hooks_stack, report, verify


async def _post(hooks: Hooks, body: object, token: str | None = "") -> Reply:
    return await hooks.api.request(
        "POST", "/api/v1/webhooks", token=hooks.token if token == "" else token, json_body=body
    )


async def test_registration_listing_deletion_and_errors(tmp_path: pathlib.Path) -> None:
    async with hooks_stack(tmp_path / "data") as hooks:
        for body, field in [
            ({"url": "ftp://example.com/x"}, "http"),
            ({"url": "https://"}, "host"),
            ({"url": "https://example.com/" + "a" * 2048}, "2048"),
            ({"url": "https://user:pw@example.com/"}, "credentials"),
            ({"url": "https://example.com/", "events": ["nope"]}, "unknown event"),
            ({"url": "https://example.com/", "events": []}, "non-empty"),
            ({"url": "https://example.com/", "extra": 1}, "unknown field"),
            ({"events": ["meeting_created"]}, "required"),
            (["https://example.com/"], "object"),
        ]:
            reply = await _post(hooks, body)
            assert reply.status == 400 and reply.error_code == "INVALID_REQUEST", body
            assert field in reply.json()["error"]["message"], reply.body
        assert (await _post(hooks, {"url": "https://example.com/"}, token=None)).status == 401

        first = await hooks.register("https://example.com/a", ["participant_left", "meeting_ended"])
        assert first["events"] == ["meeting_ended", "participant_left"]  # the documented order
        assert set(first) == {"webhook_id", "url", "events", "created_at", "secret"}
        for n in range(9):
            again = await hooks.register(f"https://example.com/{n}")
            assert again["secret"] == first["secret"]  # one secret per client
            assert again["events"] == list(EVENT_NAMES)
        over = await _post(hooks, {"url": "https://example.com/11"})
        assert over.status == 409 and over.error_code == "CONFLICT"

        listed = await hooks.api.request("GET", "/api/v1/webhooks", token=hooks.token)
        assert listed.status == 200
        hooks_listed = listed.json()["webhooks"]
        assert len(hooks_listed) == 10 and hooks_listed[0] == {
            k: v for k, v in first.items() if k != "secret"
        }

        # Another client sees none of them: 404, its ids not disclosed.
        bob = await hooks.api.token(*await add_client(hooks.settings, "bob"))
        path = f"/api/v1/webhooks/{first['webhook_id']}"
        for method, where in [("DELETE", path), ("GET", f"{path}/deliveries")]:
            reply = await hooks.api.request(method, where, token=bob)
            assert reply.status == 404 and reply.error_code == "NOT_FOUND"
        bobs = await hooks.api.request("GET", "/api/v1/webhooks", token=bob)
        assert bobs.json() == {"webhooks": []}

        for limit in ("0", "101", "x", ""):
            reply = await hooks.api.request(
                "GET", f"{path}/deliveries?limit={limit}", token=hooks.token
            )
            assert reply.status == 400 and reply.error_code == "INVALID_REQUEST", limit
        log = await hooks.log(first["webhook_id"], limit=1)
        assert log == {"deliveries": [], "truncated": False}

        deleted = await hooks.api.request("DELETE", path, token=hooks.token)
        assert deleted.status == 204
        gone = await hooks.api.request("DELETE", path, token=hooks.token)
        assert gone.status == 404 and gone.error_code == "NOT_FOUND"
        assert (await _post(hooks, {"url": "https://example.com/again"})).status == 201


async def test_report_events_checks(tmp_path: pathlib.Path) -> None:
    async with hooks_stack(tmp_path / "data") as hooks:
        meeting_id = (await hooks.create_meeting())["meeting_id"]
        too_many = [
            reg_pb.MeetingEvent(
                event_id=f"e{n}",
                meeting_id=meeting_id,
                meeting_started=reg_pb.MeetingStartedEvent(),
            )
            for n in range(501)
        ]
        with pytest.raises(InvalidRequest, match="500"):
            await report(hooks.gc.grpc_port, too_many)
        # Malformed events and unknown meetings are skipped; the rest is kept.
        await report(
            hooks.gc.grpc_port,
            [
                reg_pb.MeetingEvent(event_id="", meeting_id=meeting_id),
                reg_pb.MeetingEvent(event_id="x" * 200, meeting_id=meeting_id),
                reg_pb.MeetingEvent(event_id="no-kind", meeting_id=meeting_id),
                reg_pb.MeetingEvent(
                    event_id="unknown-meeting",
                    meeting_id="nope",
                    meeting_started=reg_pb.MeetingStartedEvent(),
                ),
            ],
        )
        assert hooks.gc.controller.webhooks.skipped == 3


def test_the_signature_is_the_documented_one() -> None:
    secret, body, t = "whsec_abc", b'{"event":"meeting_started"}', 1_767_225_600
    header = signature(secret, t, body)
    mac = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    assert header == f"t={t},v1={mac}"
    now = signature(secret, int(time.time()), body)
    assert verify(secret, body, now) and not verify(secret, body + b" ", now)
    assert not verify(secret, body, header)  # too old: a replay


def test_urls_addresses_and_backoff() -> None:
    assert check_url("https://example.com:8443/a?b=c") == "https://example.com:8443/a?b=c"
    for bad in ("https://example.com:99999/", "https://exa mple.com/", "http://h/#frag", 3):
        with pytest.raises(InvalidRequest):
            check_url(bad)
    for refused in ("127.0.0.1", "10.1.2.3", "192.168.0.1", "169.254.1.1", "::1", "fe80::1%eth0"):
        assert not address_allowed(refused), refused
    for refused in ("::ffff:127.0.0.1", "0.0.0.0", "100.64.0.1", "fc00::1", "172.16.0.1"):
        assert not address_allowed(refused), refused
    assert address_allowed("93.184.216.34") and address_allowed("2606:4700::1111")
    assert [retry_delay_s(n, 1.0) for n in (1, 2, 3, 9, 10, 1000)] == [1, 2, 4, 256, 300, 300]


async def test_https_receivers_are_verified(tmp_path: pathlib.Path) -> None:
    # A receiver serving the GC's own development certificate (localhost, 127.0.0.1): trusted
    # when its certificate is the attempt's trust anchor, refused otherwise.
    import ssl

    import trio

    from darktower.global_controller._webhook_http import post
    from darktower.global_controller.keys import load_or_create_tls
    from tests.global_controller._webhook_receiver import running_receiver

    tls = load_or_create_tls("", "", tmp_path)
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(tls.certfile, tls.keyfile)
    trusting = ssl.create_default_context(cafile=tls.certfile)
    async with running_receiver(server) as receiver:
        url = f"https://localhost:{receiver.port}/tls"
        with trio.fail_after(10):
            ok = await post(url, [("X-A", "1")], b"{}", allow_private=True, ssl_context=trusting)
            refused = await post(url, [], b"{}", allow_private=True)
        assert ok.delivered and ok.response_status == 200
        assert refused.response_status is None and "CERTIFICATE_VERIFY_FAILED" in refused.error
        assert [(r.target, r.headers["x-a"], r.body) for r in receiver.requests] == [
            ("/tls", "1", b"{}")
        ]
