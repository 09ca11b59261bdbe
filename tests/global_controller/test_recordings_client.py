"""The client library's recordings calls (docs/protocol.md §1.4) against a real GC whose
recordings directory holds a real recording: the listing, a download in range requests that
gives the file exactly, a download resumed from an offset, and the owner-only rule."""

from __future__ import annotations

import datetime
import pathlib
from collections.abc import AsyncIterator

import pytest

from darktower.client import _rest as rest
from darktower.client import open_gc_client
from darktower.errors import Forbidden, NotFound
from darktower.global_controller.clients import add_client
from darktower.processing import RecordingStore
from tests.global_controller._harness import Api, Stack, gc_stack
from tests.global_controller._recordings import Recording, between, media

T0 = datetime.datetime(2026, 3, 1, 9, 30, 15, tzinfo=datetime.UTC)


@pytest.fixture
async def stack(tmp_path: pathlib.Path) -> AsyncIterator[Stack]:
    async with gc_stack(tmp_path / "data", recordings_dir=str(tmp_path / "recordings")) as s:
        yield s


async def test_the_owner_lists_and_downloads_a_recording_in_ranges(
    h1: Api, stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = await h1.token(stack.client_id, stack.client_secret)
    created = await h1.request(
        "POST",
        "/api/v1/meetings",
        token=token,
        json_body={"display_name": "recorded", "settings": {"recording_enabled": True}},
    )
    meeting = created.json()["meeting_id"]
    store = RecordingStore(pathlib.Path(stack.settings.recordings_dir))
    streams = media(2.0)
    rec = Recording(store, meeting, "rec-alice", "alice", T0)
    rec.start("a", "v")
    rec.feed(between(streams, 0.0, 2.0))
    rec.finish()
    on_disk = (store.directory(meeting) / "rec-alice-0.webm").read_bytes()
    # Small chunks: the file takes several range requests.
    monkeypatch.setattr(rest, "RECORDING_CHUNK_BYTES", len(on_disk) // 3 + 1)

    pins = [stack.running.certificate_sha256]
    async with open_gc_client(stack.url, server_certificate_hashes=pins) as gc:
        gc.access_token = token
        listing = await gc.list_recordings(meeting)
        assert listing["truncated"] is False
        [listed] = listing["recordings"]
        assert listed["recording_id"] == "rec-alice" and listed["status"] == "complete"
        chunks: list[bytes] = []
        size = await gc.download_recording(meeting, "rec-alice", chunks.append)
        assert size == len(on_disk) and b"".join(chunks) == on_disk
        assert len(chunks) == 3
        tail: list[bytes] = []
        assert await gc.download_recording(meeting, "rec-alice", tail.append, offset=100) == size
        assert b"".join(tail) == on_disk[100:]
        nothing: list[bytes] = []
        assert (
            await gc.download_recording(meeting, "rec-alice", nothing.append, offset=size) == size
        )
        assert nothing == []
        with pytest.raises(NotFound):
            await gc.download_recording(meeting, "rec-alice", chunks.append, part=7)
        # Another client: not its meeting.
        other = await h1.token(*await add_client(stack.settings, "mallory"))
        gc.access_token = other
        with pytest.raises(Forbidden):
            await gc.list_recordings(meeting)
