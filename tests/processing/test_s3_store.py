"""The recordings store in an S3-compatible bucket (docs/architecture.md §10), over the real
S3 protocol against a server on 127.0.0.1 (tests/_s3.py): a real recording's files and
manifest uploaded as a processor uploads them, listed and read back by range as the GC reads
them, the keys ``PREFIX<meeting>/<name>``; hostile keys ignored; a bucket that does not answer
is StoreUnavailable, with no secret in its message."""

from __future__ import annotations

import datetime
import json
import os
import pathlib
from collections.abc import Callable

import pytest

from darktower.processing import RecordingStore, S3Store, StoredFile, StoreUnavailable
from darktower.processing._store import MAX_MANIFEST_BYTES
from tests._s3 import SECRET_KEY, closed_endpoint, objects, s3_bucket, s3_endpoint, s3_server
from tests.global_controller._recordings import Recording, between, media

__all__ = ["s3_bucket", "s3_endpoint", "s3_server"]  # the fixtures this module uses

T0 = datetime.datetime(2026, 3, 1, 9, 30, tzinfo=datetime.UTC)
PREFIX = "dt/recordings/"


def _recorded(tmp_path: pathlib.Path) -> RecordingStore:
    """A finished recording of meeting m-1 in two files (audio, then audio and video)."""
    local = RecordingStore(tmp_path / "local")
    streams = media(1.5)
    rec = Recording(local, "m-1", "rec-ann", "ann", T0)
    rec.start("a")
    rec.feed(between(streams, 0.0, 0.5, "a"))
    rec.add("v")
    rec.feed(between(streams, 0.5, 1.5))
    rec.finish()
    return local


def _read(
    store: S3Store, stored: StoredFile, start: int, length: int, chunk: int, meeting: str = "m-1"
) -> bytes:
    reader = store.open_range(meeting, stored, start, length)
    out = b""
    try:
        while data := reader.read(chunk):
            out += data
    finally:
        reader.close()
    return out


def test_a_recording_uploaded_is_listed_and_read_back_by_range(
    s3_endpoint: str, s3_bucket: str, tmp_path: pathlib.Path
) -> None:
    local = _recorded(tmp_path)
    store = S3Store.connect(s3_endpoint, s3_bucket, PREFIX)
    assert store.scan("m-1", max_entries=100).recording_ids == ()
    assert store.read_manifest("m-1", "rec-ann") is None

    directory = local.directory("m-1")
    for path in sorted(directory.glob("*.webm")):
        store.upload_file("m-1", path)
    manifest = local.read_manifest("m-1", "rec-ann")
    assert manifest is not None and manifest["status"] == "complete"
    store.put_manifest("m-1", "rec-ann", manifest)

    keys = objects(s3_endpoint, s3_bucket)
    assert sorted(keys) == [
        f"{PREFIX}m-1/rec-ann-0.webm",
        f"{PREFIX}m-1/rec-ann-1.webm",
        f"{PREFIX}m-1/rec-ann.json",
    ]
    for name in ("rec-ann-0.webm", "rec-ann-1.webm"):
        assert keys[f"{PREFIX}m-1/{name}"] == (directory / name).read_bytes()

    scanned = store.scan("m-1", max_entries=100)
    assert scanned.recording_ids == ("rec-ann",) and not scanned.truncated
    assert scanned.files == local.scan("m-1", max_entries=100).files
    assert store.read_manifest("m-1", "rec-ann") == manifest
    files = store.segment_files("m-1", "rec-ann", max_entries=100)
    assert [(f.part, f.name) for f in files] == [(0, "rec-ann-0.webm"), (1, "rec-ann-1.webm")]
    assert store.segment_files("m-1", "rec", max_entries=100) == []  # a prefix of the id
    assert store.scan("m-1", max_entries=2).truncated

    # Ranges, in windows smaller than the file (several GetObjects) and chunks of the GC's.
    stored = files[1]
    data = (directory / stored.name).read_bytes()
    assert stored.bytes == len(data) > 3000
    small = S3Store(store.client, s3_endpoint, s3_bucket, PREFIX, window_bytes=1000)
    assert _read(small, stored, 0, len(data), 4096) == data
    assert _read(small, stored, 10, 2500, 333) == data[10:2510]
    assert _read(store, stored, len(data) - 7, 7, 4096) == data[-7:]
    # Asked past the end (the object is shorter than listed): what there is, then the end.
    assert _read(small, stored, len(data) - 5, 100, 64) == data[-5:]
    assert _read(store, stored, len(data) + 5, 10, 64) == b""


def test_a_large_file_goes_up_in_parts(
    s3_endpoint: str, s3_bucket: str, tmp_path: pathlib.Path
) -> None:
    path = tmp_path / "big-0.mkv"
    data = os.urandom(9 * 1024 * 1024)  # over S3_UPLOAD_PART_BYTES: a multipart upload
    path.write_bytes(data)
    store = S3Store.connect(s3_endpoint, s3_bucket)
    store.upload_file("m-2", path)
    [stored] = store.segment_files("m-2", "big", max_entries=10)
    assert stored == StoredFile("big", 0, "big-0.mkv", len(data))
    assert _read(store, stored, 0, len(data), 1 << 20, "m-2") == data
    assert _read(store, stored, 5_000_000, 4_000_000, 1 << 20, "m-2") == data[5_000_000:9_000_000]


def test_keys_that_are_not_the_stores_names_are_ignored(s3_endpoint: str, s3_bucket: str) -> None:
    store = S3Store.connect(s3_endpoint, s3_bucket)
    put = store.client.put_object
    put(Bucket=s3_bucket, Key="m-3/ok.json", Body=b'{"id": "ok"}')
    put(Bucket=s3_bucket, Key="m-3/ok-0.webm", Body=b"x")
    put(Bucket=s3_bucket, Key="m-3/sub/ok-1.webm", Body=b"below a further /")
    put(Bucket=s3_bucket, Key="m-3/sub/other.json", Body=b"{}")
    put(Bucket=s3_bucket, Key="m-3/.hidden-0.webm", Body=b"not a safe name")
    put(Bucket=s3_bucket, Key="m-3/notes.txt", Body=b"neither")
    put(Bucket=s3_bucket, Key="m-3/list.json", Body=b"[1, 2]")
    put(Bucket=s3_bucket, Key="m-3/broken.json", Body=b"{not json")
    put(Bucket=s3_bucket, Key="m-3/huge.json", Body=b" " * MAX_MANIFEST_BYTES + b"{}")
    put(Bucket=s3_bucket, Key="m-30/ok-1.webm", Body=b"another meeting")
    scanned = store.scan("m-3", max_entries=100)
    assert scanned.recording_ids == ("broken", "huge", "list", "ok")
    assert scanned.files == {"ok": [StoredFile("ok", 0, "ok-0.webm", 1)]}
    assert store.read_manifest("m-3", "ok") == {"id": "ok"}
    for not_a_manifest in ("list", "broken", "huge", "missing"):
        assert store.read_manifest("m-3", not_a_manifest) is None
    for bad in ("../m-30", "a/b", "", ".hidden", "x" * 200):
        with pytest.raises(ValueError):
            store.read_manifest("m-3", bad)
        with pytest.raises(ValueError):
            store.scan(bad, max_entries=10)
    with pytest.raises(ValueError):
        store.upload_file("m-3", pathlib.Path("/etc/passwd"))


def test_settings_that_cannot_name_a_bucket_are_refused() -> None:
    for endpoint in ("ftp://127.0.0.1", "127.0.0.1:9000", "http://user:pw@127.0.0.1", "http://"):
        with pytest.raises(ValueError):
            S3Store.connect(endpoint, "bucket")
    for bucket in ("", "UPPER", "a", "b_c", "x" * 64, "a..b"):
        with pytest.raises(ValueError):
            S3Store.connect("http://127.0.0.1:9", bucket)
    for prefix in ("/abs", "a//b", "../up", "sp ace/"):
        with pytest.raises(ValueError):
            S3Store.connect("http://127.0.0.1:9", "bucket", prefix)


def test_a_bucket_that_does_not_answer_is_unavailable(
    s3_endpoint: str, s3_bucket: str, tmp_path: pathlib.Path
) -> None:
    gone = S3Store.connect(closed_endpoint(), "recordings", max_attempts=1)
    missing = S3Store.connect(s3_endpoint, "no-such-bucket", max_attempts=1)
    path = tmp_path / "r-0.webm"
    path.write_bytes(b"media")
    stored = StoredFile("r", 0, "r-0.webm", 5)
    for store in (gone, missing):
        calls: list[Callable[[S3Store], object]] = [
            lambda s: s.scan("m", max_entries=10),
            lambda s: s.read_manifest("m", "r"),
            lambda s: s.segment_files("m", "r", max_entries=10),
            lambda s: s.put_manifest("m", "r", {"id": "r"}),
            lambda s: s.upload_file("m", path),
            lambda s: s.open_range("m", stored, 0, 5).read(5),
        ]
        for call in calls:
            with pytest.raises(StoreUnavailable) as caught:
                call(store)
            message = str(caught.value)
            assert store.describe() in message
            assert SECRET_KEY not in message and "AKID" not in message
    with pytest.raises(StoreUnavailable, match="NoSuchBucket"):
        missing.scan("m", max_entries=10)
    assert json.dumps(gone.describe())  # names the bucket and endpoint, nothing else
