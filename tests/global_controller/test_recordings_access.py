"""Only a meeting's owner reaches its recordings (401 without a token, 403 for another client,
404 for an unknown meeting, recording or part), and no id reaches a file outside the
meeting's recordings: not by climbing out of the directory, not another meeting's recording,
not through a link (docs/protocol.md §1.4)."""

from __future__ import annotations

import datetime
import os
import pathlib
from collections.abc import AsyncIterator

import pytest

from darktower.global_controller.clients import add_client
from darktower.processing import RecordingStore
from tests.global_controller._harness import Api, Reply, Stack, gc_stack
from tests.global_controller._recordings import Recording, between, media

T0 = datetime.datetime(2026, 3, 1, 9, 30, tzinfo=datetime.UTC)


@pytest.fixture
async def stack(tmp_path: pathlib.Path) -> AsyncIterator[Stack]:
    async with gc_stack(tmp_path / "data", recordings_dir=str(tmp_path / "recordings")) as s:
        yield s


async def _recorded_meeting(api: Api, stack: Stack, token: str, name: str) -> str:
    created = await api.request(
        "POST", "/api/v1/meetings", token=token, json_body={"display_name": name}
    )
    assert created.status == 201, created.body
    meeting_id: str = created.json()["meeting_id"]
    store = RecordingStore(pathlib.Path(stack.settings.recordings_dir))
    rec = Recording(store, meeting_id, f"rec-{name}", name, T0)
    rec.start("a")
    rec.feed(between(media(0.5), 0.0, 0.5, "a"))
    rec.finish()
    return meeting_id


def _no_file(reply: Reply, path: str) -> None:
    """``reply`` is a JSON body (an error, or what another route says), never a file."""
    assert reply.headers["content-type"].startswith("application/json"), path
    assert b"SECRET" not in reply.body, path
    reply.json()


async def test_only_the_owner_lists_and_downloads(api: Api, stack: Stack) -> None:
    owner = await api.token(stack.client_id, stack.client_secret)
    other_id, other_secret = await add_client(stack.settings, "mallory")
    other = await api.token(other_id, other_secret)
    meeting = await _recorded_meeting(api, stack, owner, "alice")
    listing = f"/api/v1/meetings/{meeting}/recordings"
    download = f"{listing}/rec-alice"

    assert (await api.request("GET", listing, token=owner)).status == 200
    assert (await api.request("GET", download, token=owner)).status == 200
    for path in (listing, download, f"{download}?part=0"):
        anonymous = await api.request("GET", path)
        assert (anonymous.status, anonymous.error_code) == (401, "UNAUTHORIZED"), path
        bad_token = await api.request("GET", path, token=owner[:-4] + "AAAA")
        assert (bad_token.status, bad_token.error_code) == (401, "UNAUTHORIZED"), path
        stranger = await api.request("GET", path, token=other)
        assert (stranger.status, stranger.error_code) == (403, "FORBIDDEN"), path
        assert b"RIFF" not in stranger.body and b"\x1aE\xdf\xa3" not in stranger.body

    # The meeting ended: still its owner's, still no one else's.
    assert (await api.request("DELETE", f"/api/v1/meetings/{meeting}", token=owner)).status == 204
    assert (await api.request("GET", download, token=owner)).status == 200
    assert (await api.request("GET", download, token=other)).status == 403

    unknown = "/api/v1/meetings/00000000-0000-4000-8000-000000000000/recordings"
    for path in (unknown, f"{unknown}/rec-alice"):
        missing = await api.request("GET", path, token=owner)
        assert (missing.status, missing.error_code) == (404, "NOT_FOUND"), path
    for path in (f"{listing}/rec-nobody", f"{download}?part=1", f"{download}?part=999999999"):
        missing = await api.request("GET", path, token=owner)
        assert (missing.status, missing.error_code) == (404, "NOT_FOUND"), path
    for part in ("-1", "x", "0x1", "1234567890", ""):
        bad = await api.request("GET", f"{download}?part={part}", token=owner)
        assert (bad.status, bad.error_code) == (400, "INVALID_REQUEST"), part


async def test_no_id_reaches_a_file_outside_the_meetings_recordings(
    api: Api, stack: Stack, tmp_path: pathlib.Path
) -> None:
    owner = await api.token(stack.client_id, stack.client_secret)
    meeting = await _recorded_meeting(api, stack, owner, "alice")
    elsewhere = await _recorded_meeting(api, stack, owner, "bob")  # the same owner's
    root = pathlib.Path(stack.settings.recordings_dir)
    directory = root / meeting
    # Files an id could aim at: beside the meetings, above the store, and a link out.
    (root / "secret.json").write_text('{"id": "secret"}')
    (root / "secret-0.webm").write_bytes(b"SECRET" * 10)
    (tmp_path / "outside.json").write_text('{"id": "outside"}')
    (tmp_path / "outside-0.webm").write_bytes(b"SECRET" * 10)
    os.symlink(tmp_path / "outside-0.webm", directory / "linked-0.webm")
    os.symlink(tmp_path / "outside.json", directory / "linked.json")
    (directory / "carol.json").write_text('{"id": "carol", "status": "complete"}')
    os.symlink(tmp_path / "outside-0.webm", directory / "carol-0.webm")

    base = f"/api/v1/meetings/{meeting}/recordings"
    for recording_id in (
        "..",
        "%2e%2e",
        "..%2Fsecret",
        "..%2F..%2Foutside",
        "%2e%2e%2f%2e%2e%2foutside",
        "..%5Csecret",
        "rec-alice%2F..%2F..%2Fsecret",
        "%2Fetc%2Fpasswd",
        ".rec-alice",
        "rec-alice%00",
        "rec-alice-0.webm",  # a file's name is not a recording's id
        "rec-bob",  # another meeting's recording
        "linked",  # a manifest that is a link
        "carol",  # a manifest whose file is a link
    ):
        for query in ("", "?part=0"):
            path = f"{base}/{recording_id}{query}"
            refused = await api.request("GET", path, token=owner)
            _no_file(refused, path)
            if recording_id != "..":  # which httpx makes the meeting's own URL
                assert refused.status in (400, 404), (path, refused.status)
                assert refused.error_code in ("NOT_FOUND", "INVALID_REQUEST")
    # Raw dot segments, as a client may send them (the HTTP/3 client sends them unchanged).
    for path in (f"{base}/../../../secret", f"{base}/./../recordings/x/../../..%2Fsecret"):
        _no_file(await api.request("GET", path, token=owner), path)

    listed = (await api.request("GET", base, token=owner)).json()["recordings"]
    assert [r["recording_id"] for r in listed] == ["carol", "rec-alice"]
    carol = listed[0]
    assert carol["files"] == [] and carol["bytes"] == 0  # the link is not one of its files
    assert listed[1]["participant_name"] == "alice"
    assert (await api.request("GET", f"{base}/rec-bob", token=owner)).status == 404
    assert (
        await api.request("GET", f"/api/v1/meetings/{elsewhere}/recordings/rec-bob", token=owner)
    ).status == 200
