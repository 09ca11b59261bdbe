"""The GC serves a meeting's recordings to its owner (docs/protocol.md §1.4): the listing, a
file's download whole or by range, a recording still being written; over HTTP/1.1 and HTTP/3
against a real GC whose recordings directory holds real recordings (tests/global_controller/
_recordings.py)."""

from __future__ import annotations

import datetime
import pathlib
from collections.abc import AsyncIterator

import pytest

from darktower.processing import RecordingStore
from tests.global_controller._harness import Api, Stack, gc_stack
from tests.global_controller._recordings import Recording, between, decoded_frames, media

T0 = datetime.datetime(2026, 3, 1, 9, 30, 15, 250_000, tzinfo=datetime.UTC)


@pytest.fixture
async def stack(tmp_path: pathlib.Path) -> AsyncIterator[Stack]:
    async with gc_stack(tmp_path / "data", recordings_dir=str(tmp_path / "recordings")) as s:
        yield s


def _store(stack: Stack) -> RecordingStore:
    return RecordingStore(pathlib.Path(stack.settings.recordings_dir))


async def _meeting(api: Api, token: str) -> str:
    created = await api.request(
        "POST",
        "/api/v1/meetings",
        token=token,
        json_body={"display_name": "recorded", "settings": {"recording_enabled": True}},
    )
    assert created.status == 201, created.body
    meeting_id: str = created.json()["meeting_id"]
    return meeting_id


def _alice(store: RecordingStore, meeting_id: str) -> Recording:
    """A finished recording in two files: audio alone, then audio and video from when the
    camera came on (a stream after the header starts a new file)."""
    streams = media(2.0)
    rec = Recording(store, meeting_id, "rec-alice", "alice", T0)
    rec.start("a")
    rec.feed(between(streams, 0.0, 0.5, "a"))
    rec.add("v")
    rec.feed(between(streams, 0.5, 2.0))
    rec.finish()
    return rec


async def test_the_owner_lists_and_downloads_recordings(
    api: Api, stack: Stack, tmp_path: pathlib.Path
) -> None:
    token = await api.token(stack.client_id, stack.client_secret)
    meeting = await _meeting(api, token)
    base = f"/api/v1/meetings/{meeting}/recordings"
    empty = await api.request("GET", base, token=token)
    assert empty.status == 200, empty.body
    assert empty.json() == {"recordings": [], "truncated": False}

    store = _store(stack)
    _alice(store, meeting)
    directory = store.directory(meeting)
    part0, part1 = directory / "rec-alice-0.webm", directory / "rec-alice-1.webm"
    sizes = [part0.stat().st_size, part1.stat().st_size]

    listed = await api.request("GET", base, token=token)
    assert listed.status == 200, listed.body
    body = listed.json()
    assert body["truncated"] is False
    [alice] = body["recordings"]
    files = alice.pop("files")
    assert alice == {
        "recording_id": "rec-alice",
        "participant_id": "p-alice",
        "participant_name": "alice",
        "streams": [
            {"stream_id": "a", "kind": "audio", "codec": "opus"},
            {"stream_id": "v", "kind": "video", "codec": "VP8"},
        ],
        "started_at": "2026-03-01T09:30:15Z",
        "duration_ms": alice["duration_ms"],
        "bytes": sum(sizes),
        "status": "complete",
        "reason": "MEETING_ENDED",
    }
    assert 1900 <= alice["duration_ms"] <= 2100
    assert [f["part"] for f in files] == [0, 1]
    for f, size, name in zip(files, sizes, ("rec-alice-0.webm", "rec-alice-1.webm"), strict=True):
        assert f["name"] == name and f["bytes"] == size
        assert f["content_type"] == "video/webm" and f["finished"] is True
        assert f["url"] == f"{stack.url}{base}/rec-alice?part={f['part']}"
    assert files[0]["streams"] == ["a"] and files[1]["streams"] == ["a", "v"]

    # Whole: each part is the file on disk, and plays.
    for part, path in ((0, part0), (1, part1)):
        whole = await api.request("GET", f"{base}/rec-alice?part={part}", token=token)
        assert whole.status == 200, whole.body
        assert whole.body == path.read_bytes()
        assert whole.headers["content-type"] == "video/webm"
        assert whole.headers["accept-ranges"] == "bytes"
        assert whole.headers["content-length"] == str(path.stat().st_size)
        assert f'filename="{path.name}"' in whole.headers["content-disposition"]
        assert "content-range" not in whole.headers
    counts = decoded_frames(whole.body, tmp_path, "downloaded.webm")
    assert counts["video"] >= 40 and counts["audio"] >= 70  # 1.5 s at 30 fps, 20 ms frames
    # Without ?part: the first file.
    first = await api.request("GET", f"{base}/rec-alice", token=token)
    assert first.status == 200 and first.body == part0.read_bytes()

    # Ranges of part 1.
    data, size = part1.read_bytes(), sizes[1]
    cases = {
        "bytes=0-99": (0, 99),  # the first bytes
        "bytes=-50": (size - 50, size - 1),  # a suffix
        "bytes=1000-": (1000, size - 1),  # open-ended
        f"bytes=10-{size + 500}": (10, size - 1),  # cut at the end
        f"bytes={size - 1}-{size - 1}": (size - 1, size - 1),  # the last byte
    }
    for header, (first_byte, last_byte) in cases.items():
        got = await api.request(
            "GET", f"{base}/rec-alice?part=1", token=token, headers={"Range": header}
        )
        assert got.status == 206, (header, got.body[:200])
        assert got.headers["content-range"] == f"bytes {first_byte}-{last_byte}/{size}"
        assert got.headers["content-length"] == str(last_byte - first_byte + 1)
        assert got.body == data[first_byte : last_byte + 1], header
    for header in (f"bytes={size}-", f"bytes={size + 10}-{size + 20}", "bytes=-0"):
        refused = await api.request(
            "GET", f"{base}/rec-alice?part=1", token=token, headers={"Range": header}
        )
        assert refused.status == 416, header
        assert refused.error_code == "INVALID_REQUEST"
        assert refused.headers["content-range"] == f"bytes */{size}"
    # Ranges this server ignores: the whole file.
    for header in ("bytes=0-9,20-29", "items=0-9", "bytes=9-0", "bytes=x-"):
        whole = await api.request(
            "GET", f"{base}/rec-alice?part=1", token=token, headers={"Range": header}
        )
        assert (whole.status, whole.body) == (200, data), header


async def test_a_recording_in_progress_is_listed_and_served_as_written(
    api: Api, stack: Stack
) -> None:
    token = await api.token(stack.client_id, stack.client_secret)
    meeting = await _meeting(api, token)
    base = f"/api/v1/meetings/{meeting}/recordings"
    store = _store(stack)
    streams = media(4.0)
    bob = Recording(store, meeting, "rec-bob", "bob", T0 + datetime.timedelta(seconds=5))
    bob.start("a", "v")  # the manifest says "recording" and lists no file yet
    bob.feed(between(streams, 0.0, 2.0))
    _alice(store, meeting)  # started 5 s before bob: listed first
    path = store.directory(meeting) / "rec-bob-0.webm"
    written = path.stat().st_size
    assert written > 0

    listed = (await api.request("GET", base, token=token)).json()["recordings"]
    assert [r["recording_id"] for r in listed] == ["rec-alice", "rec-bob"]
    in_progress = listed[1]
    assert in_progress["status"] == "recording" and in_progress["reason"] == ""
    assert in_progress["duration_ms"] == 0
    assert in_progress["bytes"] == written
    [file] = in_progress["files"]
    assert (file["name"], file["part"], file["bytes"]) == ("rec-bob-0.webm", 0, written)
    assert file["finished"] is False and file["streams"] == []

    early = await api.request("GET", f"{base}/rec-bob", token=token)
    assert early.status == 200 and len(early.body) == written
    tail = await api.request("GET", f"{base}/rec-bob", token=token, headers={"Range": "bytes=-10"})
    assert tail.headers["content-range"] == f"bytes {written - 10}-{written - 1}/{written}"

    bob.feed(between(streams, 2.0, 4.0))  # clusters of a second more reach the file
    grown = path.stat().st_size
    assert grown > written
    later = await api.request(
        "GET", f"{base}/rec-bob", token=token, headers={"Range": f"bytes={written}-"}
    )
    assert later.status == 206
    assert later.headers["content-range"] == f"bytes {written}-{grown - 1}/{grown}"
    assert early.body + later.body == path.read_bytes()

    bob.finish()
    [_, done] = (await api.request("GET", base, token=token)).json()["recordings"]
    assert done["status"] == "complete" and done["files"][0]["finished"] is True
    assert done["bytes"] == path.stat().st_size


async def test_head_gives_the_headers_alone(h1: Api, stack: Stack) -> None:
    token = await h1.token(stack.client_id, stack.client_secret)
    meeting = await _meeting(h1, token)
    _alice(_store(stack), meeting)
    url = f"/api/v1/meetings/{meeting}/recordings/rec-alice"
    size = (_store(stack).directory(meeting) / "rec-alice-0.webm").stat().st_size
    head = await h1.request("HEAD", url, token=token)
    assert head.status == 200 and head.body == b""
    assert head.headers["content-length"] == str(size)
    ranged = await h1.request("HEAD", url, token=token, headers={"Range": "bytes=0-9"})
    assert ranged.status == 206 and ranged.body == b""
    assert ranged.headers["content-range"] == f"bytes 0-9/{size}"
