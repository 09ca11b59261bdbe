"""The GC serves recordings from an S3-compatible bucket (docs/protocol.md §1.4), over the real
S3 protocol against a server on 127.0.0.1 (tests/_s3.py): a real GC given
``--recordings-s3-*`` lists a meeting's recordings from the bucket's manifests and keys (one
in progress from its start manifest alone), downloads a file whole and by range through
ranged GetObjects; a bucket that does not answer is 503 with the contract's error body."""

from __future__ import annotations

import datetime
import pathlib
from collections.abc import AsyncIterator

import pytest

from darktower.processing import RecordingStore, S3Store
from tests._s3 import closed_endpoint, objects, s3_bucket, s3_endpoint, s3_server
from tests.global_controller._harness import Api, Stack, gc_stack
from tests.global_controller._recordings import Recording, between, decoded_frames, media

__all__ = ["s3_bucket", "s3_endpoint", "s3_server"]  # the fixtures this module uses

T0 = datetime.datetime(2026, 3, 1, 9, 30, 15, tzinfo=datetime.UTC)
PREFIX = "gc-test/"


@pytest.fixture
async def stack(tmp_path: pathlib.Path, s3_endpoint: str, s3_bucket: str) -> AsyncIterator[Stack]:
    async with gc_stack(
        tmp_path / "data",
        recordings_dir=str(tmp_path / "unused"),
        recordings_s3_endpoint=s3_endpoint,
        recordings_s3_bucket=s3_bucket,
        recordings_s3_prefix=PREFIX,
    ) as s:
        yield s


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


def _upload(local: RecordingStore, bucket: S3Store, meeting: str, recording_id: str) -> None:
    """What a processor puts in the bucket: the files, then the manifest."""
    for path in sorted(local.directory(meeting).glob(f"{recording_id}-*.webm")):
        bucket.upload_file(meeting, path)
    manifest = local.read_manifest(meeting, recording_id)
    assert manifest is not None
    bucket.put_manifest(meeting, recording_id, manifest)


async def test_the_owner_lists_and_downloads_recordings_from_the_bucket(
    h1: Api, stack: Stack, s3_endpoint: str, s3_bucket: str, tmp_path: pathlib.Path
) -> None:
    token = await h1.token(stack.client_id, stack.client_secret)
    meeting = await _meeting(h1, token)
    base = f"/api/v1/meetings/{meeting}/recordings"
    empty = await h1.request("GET", base, token=token)
    assert (empty.status, empty.json()) == (200, {"recordings": [], "truncated": False})

    local = RecordingStore(tmp_path / "processor")
    bucket = S3Store.connect(s3_endpoint, s3_bucket, PREFIX)
    streams = media(2.0)
    alice = Recording(local, meeting, "rec-alice", "alice", T0)
    alice.start("a")
    alice.feed(between(streams, 0.0, 0.5, "a"))
    alice.add("v")
    alice.feed(between(streams, 0.5, 2.0))
    alice.finish()
    _upload(local, bucket, meeting, "rec-alice")
    # Bob's recording runs: the bucket has its start manifest, its files are local.
    bob = Recording(local, meeting, "rec-bob", "bob", T0 + datetime.timedelta(seconds=3))
    bob.start("a", "v")
    start_manifest = local.read_manifest(meeting, "rec-bob")
    assert start_manifest is not None
    bucket.put_manifest(meeting, "rec-bob", start_manifest)
    assert sorted(objects(s3_endpoint, s3_bucket)) == [
        f"{PREFIX}{meeting}/rec-alice-0.webm",
        f"{PREFIX}{meeting}/rec-alice-1.webm",
        f"{PREFIX}{meeting}/rec-alice.json",
        f"{PREFIX}{meeting}/rec-bob.json",
    ]

    listed = await h1.request("GET", base, token=token)
    assert listed.status == 200, listed.body
    body = listed.json()
    assert body["truncated"] is False
    [first, running] = body["recordings"]
    directory = local.directory(meeting)
    sizes = [(directory / f"rec-alice-{n}.webm").stat().st_size for n in (0, 1)]
    assert first["recording_id"] == "rec-alice" and first["status"] == "complete"
    assert first["reason"] == "MEETING_ENDED" and first["bytes"] == sum(sizes)
    assert first["started_at"] == "2026-03-01T09:30:15Z"
    assert 1900 <= first["duration_ms"] <= 2100
    assert [(f["part"], f["bytes"], f["finished"]) for f in first["files"]] == [
        (0, sizes[0], True),
        (1, sizes[1], True),
    ]
    assert first["files"][1]["url"] == f"{stack.url}{base}/rec-alice?part=1"
    assert first["files"][1]["streams"] == ["a", "v"]
    assert running["recording_id"] == "rec-bob" and running["status"] == "recording"
    assert (running["files"], running["bytes"], running["duration_ms"]) == ([], 0, 0)

    for part in (0, 1):
        whole = await h1.request("GET", f"{base}/rec-alice?part={part}", token=token)
        assert whole.status == 200, whole.body
        assert whole.body == (directory / f"rec-alice-{part}.webm").read_bytes()
        assert whole.headers["content-type"] == "video/webm"
        assert whole.headers["content-length"] == str(sizes[part])
        assert whole.headers["accept-ranges"] == "bytes"
    counts = decoded_frames(whole.body, tmp_path, "downloaded.webm")
    assert counts["video"] >= 40 and counts["audio"] >= 70
    first_file = await h1.request("GET", f"{base}/rec-alice", token=token)
    assert first_file.body == (directory / "rec-alice-0.webm").read_bytes()

    data, size = (directory / "rec-alice-1.webm").read_bytes(), sizes[1]
    for header, (a, b) in {
        "bytes=0-99": (0, 99),
        "bytes=-50": (size - 50, size - 1),
        f"bytes=1000-{size + 500}": (1000, size - 1),
    }.items():
        got = await h1.request(
            "GET", f"{base}/rec-alice?part=1", token=token, headers={"Range": header}
        )
        assert got.status == 206, (header, got.body[:200])
        assert got.headers["content-range"] == f"bytes {a}-{b}/{size}"
        assert got.body == data[a : b + 1], header
    past = await h1.request(
        "GET", f"{base}/rec-alice?part=1", token=token, headers={"Range": f"bytes={size}-"}
    )
    assert past.status == 416 and past.headers["content-range"] == f"bytes */{size}"

    for missing in ("rec-bob", "rec-alice?part=2", "rec-carol", "..%2Fx"):
        gone = await h1.request("GET", f"{base}/{missing}", token=token)
        assert (gone.status, gone.error_code) == (404, "NOT_FOUND"), missing


async def test_a_bucket_that_does_not_answer_is_503(
    tmp_path: pathlib.Path,
    s3_endpoint: str,  # s3_endpoint: the credentials, as deployed
) -> None:
    async with (
        gc_stack(
            tmp_path / "gone",
            recordings_s3_endpoint=closed_endpoint(),
            recordings_s3_bucket="recordings",
        ) as gone,
        gone.api("h1") as api,
    ):
        token = await api.token(gone.client_id, gone.client_secret)
        meeting = await _meeting(api, token)
        base = f"/api/v1/meetings/{meeting}/recordings"
        for path in (base, f"{base}/rec-alice", f"{base}/rec-alice?part=1"):
            refused = await api.request("GET", path, token=token)
            assert refused.status == 503, (path, refused.body)
            assert refused.error_code == "INTERNAL_ERROR"
            assert "unavailable" in refused.json()["error"]["message"]
            assert "127.0.0.1" not in refused.body.decode()  # nothing of the store's address
            assert refused.headers["retry-after"] == "5"
