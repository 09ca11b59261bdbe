"""Recordings in an S3-compatible bucket (docs/architecture.md §10): the same names as the
recordings directory, as object keys ``{prefix}{meeting_id}/{name}``, where ``name`` is a
manifest ``{recording_id}.json`` or a file ``{recording_id}-{n}.webm`` (``.mkv``).

Through boto3 (the ``s3`` extra), imported when a store is made, never when
``darktower.processing`` is: a deployment without the option needs neither boto3 nor the
network modules it loads. boto3 is synchronous: every method blocks on the network, and its
callers run it off the event loop's thread. Credentials come from boto3's own chain (the
``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN`` environment
variables, ``AWS_PROFILE`` and the shared credentials file, an instance role); no setting
holds a secret, and no message here includes one. Every failure of the bucket is a
:class:`StoreUnavailable` naming the bucket and what failed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import pathlib
import re
import urllib.parse
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Final

from ._store import (
    MANIFEST_SUFFIX,
    MAX_MANIFEST_BYTES,
    SAFE_NAME,
    SEGMENT_FILE,
    ByteReader,
    StoredFile,
    StoredRecordings,
    StoreUnavailable,
    parse_manifest,
    safe_name,
)

if TYPE_CHECKING:
    from botocore.response import StreamingBody
    from types_boto3_s3 import S3Client

# Bounds of one call to the bucket. A connection not made in S3_CONNECT_TIMEOUT_S, or a read
# silent for S3_READ_TIMEOUT_S, fails the attempt; S3_MAX_ATTEMPTS attempts in all (boto3's
# "standard" retries, with their backoff), then the call raises StoreUnavailable.
S3_CONNECT_TIMEOUT_S: Final = 3.0
S3_READ_TIMEOUT_S: Final = 10.0
S3_MAX_ATTEMPTS: Final = 2
# Connections boto3 keeps to the endpoint (its pool; more calls at once open and drop extra
# connections). The services bound their calls at once with their worker-thread limiters.
S3_MAX_POOL_CONNECTIONS: Final = 16
# Keys one ListObjectsV2 call returns (S3's own maximum).
S3_PAGE_KEYS: Final = 1000
# A download reads one GetObject of at most this many bytes (a Range) at a time, streamed
# in the reader's chunks: a slow client holds one window's connection, never the object.
S3_WINDOW_BYTES: Final = 8 * 1024 * 1024
# A window cut mid-way (a read error) is asked again from where it stopped this many times.
S3_READ_RESUMES: Final = 2
# Files at least this large go up in parts of this size, one part at a time (memory: one
# part); smaller ones in one PutObject.
S3_UPLOAD_PART_BYTES: Final = 8 * 1024 * 1024
# Bucket names S3 accepts (lowercase letters, digits, dots, hyphens).
BUCKET_NAME: Final = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
# A key prefix of S3's safe characters ("/" to make folders), no leading "/".
KEY_PREFIX: Final = re.compile(r"(?:[A-Za-z0-9!_.*'()-][A-Za-z0-9!_.*'()/-]{0,511})?")
# ClientError codes of an object (or range) that is not there: not a failure of the bucket.
_MISSING: Final = frozenset({"NoSuchKey", "404", "NotFound"})
_PAST_END: Final = frozenset({"InvalidRange", "416"})


def check_endpoint(endpoint: str) -> str:
    """``endpoint`` if it is an http(s) URL with a host and no user or password in it."""
    url = urllib.parse.urlsplit(endpoint)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise ValueError(f"endpoint {endpoint!r} is not an http:// or https:// URL")
    if url.username is not None or url.password is not None:
        raise ValueError("the endpoint URL cannot hold credentials (boto3's chain gives them)")
    if url.query or url.fragment:
        raise ValueError(f"endpoint {endpoint!r} has a query or fragment")
    return endpoint


def check_bucket(bucket: str, prefix: str) -> None:
    """``ValueError`` unless ``bucket`` is a bucket's name and ``prefix`` a key prefix."""
    if not BUCKET_NAME.fullmatch(bucket) or ".." in bucket:
        raise ValueError(f"{bucket!r} is not an S3 bucket name")
    if not KEY_PREFIX.fullmatch(prefix) or ".." in prefix or "//" in prefix:
        raise ValueError(f"key prefix {prefix!r}: S3's safe characters, no leading '/'")


class S3Store:
    """A bucket holding recordings as the recordings directory holds them: a
    :class:`~darktower.processing.RecordingReader` for the GC, and what a processor uploads
    to. Thread-safe (boto3's clients are); owns its client."""

    def __init__(
        self,
        client: S3Client,
        endpoint: str,
        bucket: str,
        prefix: str = "",
        *,
        window_bytes: int = S3_WINDOW_BYTES,
    ) -> None:
        check_bucket(bucket, prefix)
        self.client = client
        self.endpoint = endpoint
        self.bucket = bucket
        self.prefix = prefix
        self.window_bytes = window_bytes

    @classmethod
    def connect(
        cls, endpoint: str, bucket: str, prefix: str = "", *, max_attempts: int = S3_MAX_ATTEMPTS
    ) -> S3Store:
        """A store on the bucket at ``endpoint``, with a client of its own (no call made
        yet). ``ValueError`` for a bad endpoint, bucket or prefix; ``ImportError`` without
        boto3 (``pip install darktower[s3]``)."""
        check_endpoint(endpoint)
        check_bucket(bucket, prefix)
        import boto3
        from botocore.config import Config

        # boto3's debug logs carry request headers (a session token among them): whatever the
        # service's level, they stay quiet below warnings.
        for name in ("boto3", "botocore", "s3transfer"):
            quiet = logging.getLogger(name)
            if quiet.getEffectiveLevel() < logging.WARNING:
                quiet.setLevel(logging.WARNING)

        config = Config(
            connect_timeout=S3_CONNECT_TIMEOUT_S,
            read_timeout=S3_READ_TIMEOUT_S,
            retries={"max_attempts": max_attempts, "mode": "standard"},
            max_pool_connections=S3_MAX_POOL_CONNECTIONS,
            # S3-compatible servers: the bucket in the path, and checksums only where S3
            # requires them (not every server knows the newer ones boto3 adds by default).
            s3={"addressing_style": "path"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        client = boto3.session.Session().client("s3", endpoint_url=endpoint, config=config)
        return cls(client, endpoint, bucket, prefix)

    def describe(self) -> str:
        return f"bucket {self.bucket!r} at {self.endpoint}"

    def meeting_prefix(self, meeting_id: str) -> str:
        return f"{self.prefix}{safe_name(meeting_id, 'meeting id')}/"

    def key(self, meeting_id: str, name: str) -> str:
        """The key of the store's file or manifest ``name``."""
        return self.meeting_prefix(meeting_id) + safe_name(name, "file name")

    @contextlib.contextmanager
    def _call(self, what: str) -> Iterator[None]:
        """Any failure of boto3 in the block as StoreUnavailable, with what was done."""
        from boto3.exceptions import Boto3Error
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "?")
            raise StoreUnavailable(f"{self.describe()}: {what}: refused ({code})") from None
        except (BotoCoreError, Boto3Error) as exc:  # Boto3Error: a failed upload
            raise StoreUnavailable(f"{self.describe()}: {what}: {type(exc).__name__}") from None

    # -- what a processor uploads --------------------------------------------------------

    def put_manifest(self, meeting_id: str, recording_id: str, manifest: dict[str, Any]) -> None:
        """Write a recording's manifest in place of the one there (S3 replaces an object
        whole: a reader sees one or the other)."""
        key = self.key(meeting_id, f"{recording_id}{MANIFEST_SUFFIX}")
        body = json.dumps(manifest, indent=1, sort_keys=True).encode()
        with self._call(f"writing {key}"):
            self.client.put_object(
                Bucket=self.bucket, Key=key, Body=body, ContentType="application/json"
            )

    def upload_file(self, meeting_id: str, path: pathlib.Path) -> None:
        """Upload a recording's file (named as the store names them), in parts when large,
        one part at a time."""
        if not SEGMENT_FILE.fullmatch(path.name):
            raise ValueError(f"{path.name!r} is not a recording's file")
        key = self.key(meeting_id, path.name)
        from boto3.s3.transfer import TransferConfig

        transfer = TransferConfig(
            multipart_threshold=S3_UPLOAD_PART_BYTES,
            multipart_chunksize=S3_UPLOAD_PART_BYTES,
            use_threads=False,
        )
        content_type = "video/x-matroska" if path.suffix == ".mkv" else "video/webm"
        with self._call(f"uploading {key}"):
            self.client.upload_file(
                str(path),
                self.bucket,
                key,
                ExtraArgs={"ContentType": content_type},
                Config=transfer,
            )

    # -- readers (the GC serves the bucket: docs/protocol.md §1.4) --------------------------

    def _list(self, prefix: str, max_entries: int) -> tuple[list[tuple[str, int]], bool]:
        """(name, size) of the objects right under ``prefix`` (keys below a further "/"
        are left out), at most ``max_entries``; and whether there were more."""
        found: list[tuple[str, int]] = []
        token = ""
        while True:
            args: dict[str, Any] = {
                "Bucket": self.bucket,
                "Prefix": prefix,
                "Delimiter": "/",
                "MaxKeys": max(1, min(S3_PAGE_KEYS, max_entries - len(found))),
            }
            if token:
                args["ContinuationToken"] = token
            with self._call(f"listing {prefix}"):
                page = self.client.list_objects_v2(**args)
            for obj in page.get("Contents", ()):
                key, size = obj.get("Key", ""), obj.get("Size", 0)
                if len(found) >= max_entries:
                    return found, True
                if key.startswith(prefix):
                    found.append((key[len(prefix) :], size))
            token = page.get("NextContinuationToken", "")
            if not page.get("IsTruncated") or not token:
                return found, False
            if len(found) >= max_entries:
                return found, True

    def read_manifest(self, meeting_id: str, recording_id: str) -> dict[str, Any] | None:
        """One recording's manifest; None when it has none, or none that is a JSON object of
        at most MAX_MANIFEST_BYTES. ``ValueError`` for an id that cannot name a file."""
        from botocore.exceptions import ClientError

        key = self.key(meeting_id, f"{safe_name(recording_id, 'recording id')}{MANIFEST_SUFFIX}")
        with self._call(f"reading {key}"):
            try:
                found = self.client.get_object(
                    Bucket=self.bucket, Key=key, Range=f"bytes=0-{MAX_MANIFEST_BYTES}"
                )
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in _MISSING | _PAST_END:
                    return None
                raise
            body = found["Body"]
            try:
                data = body.read(MAX_MANIFEST_BYTES + 1)
            finally:
                body.close()
        return parse_manifest(data)

    def scan(self, meeting_id: str, *, max_entries: int) -> StoredRecordings:
        """One listing of the meeting's keys, at most ``max_entries`` looked at: the
        recordings that have a manifest, sorted by id, and the files of every recording."""
        listed, truncated = self._list(self.meeting_prefix(meeting_id), max_entries)
        ids: list[str] = []
        files: dict[str, list[StoredFile]] = {}
        for name, size in listed:
            if name.endswith(MANIFEST_SUFFIX):
                stem = name[: -len(MANIFEST_SUFFIX)]
                if SAFE_NAME.fullmatch(stem) and ".." not in stem:
                    ids.append(stem)
            elif stored := _stored_file(name, size):
                files.setdefault(stored.recording_id, []).append(stored)
        for found in files.values():
            found.sort(key=lambda f: f.part)
        return StoredRecordings(tuple(sorted(ids)), files, truncated)

    def segment_files(
        self, meeting_id: str, recording_id: str, *, max_entries: int
    ) -> list[StoredFile]:
        """The files of one recording, in part order, with their sizes (at most
        ``max_entries`` keys looked at)."""
        name = safe_name(recording_id, "recording id")
        listed, _ = self._list(f"{self.meeting_prefix(meeting_id)}{name}-", max_entries)
        found = []
        for rest, size in listed:
            stored = _stored_file(f"{name}-{rest}", size)
            if stored is not None and stored.recording_id == name:
                found.append(stored)
        return sorted(found, key=lambda f: f.part)

    def open_range(
        self, meeting_id: str, stored: StoredFile, start: int, length: int
    ) -> ByteReader:
        """``length`` bytes of the object from ``start``, read a window (a GetObject with a
        Range) at a time; no call is made before the first read."""
        return _ObjectRange(self, self.key(meeting_id, stored.name), start, length)


def _stored_file(name: str, size: int) -> StoredFile | None:
    match = SEGMENT_FILE.fullmatch(name)
    if match is None or not SAFE_NAME.fullmatch(name) or ".." in name:
        return None
    return StoredFile(match["recording"], int(match["part"]), name, size)


class _ObjectRange:
    """Bytes ``start`` to ``start + length`` of one object, streamed from ranged GetObjects
    of at most S3_WINDOW_BYTES; a window cut mid-way is asked again from where it stopped
    (S3_READ_RESUMES times in a row). An object shorter than asked ends early."""

    def __init__(self, store: S3Store, key: str, start: int, length: int) -> None:
        self._store = store
        self._key = key
        self._next = start
        self._end = start + length
        self._body: StreamingBody | None = None
        self._window_end = start

    def _open_window(self) -> bool:
        """False when the object ends before ``_next``."""
        from botocore.exceptions import ClientError

        last = min(self._end, self._next + self._store.window_bytes) - 1
        store = self._store
        with store._call(f"reading {self._key}"):
            try:
                found = store.client.get_object(
                    Bucket=store.bucket, Key=self._key, Range=f"bytes={self._next}-{last}"
                )
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in _PAST_END:
                    return False
                raise
        self._body = found["Body"]
        self._window_end = last + 1
        return True

    def read(self, size: int) -> bytes:
        from botocore.exceptions import BotoCoreError

        resumes = 0
        while self._next < self._end:
            if self._body is None and not self._open_window():
                return b""
            assert self._body is not None
            want = min(size, self._window_end - self._next)
            try:
                data = self._body.read(want)
            except (BotoCoreError, OSError) as exc:
                self._close_body()
                resumes += 1
                if resumes > S3_READ_RESUMES:
                    raise StoreUnavailable(
                        f"{self._store.describe()}: reading {self._key}: {type(exc).__name__}"
                    ) from None
                continue
            if not data:  # the object is shorter than the window asked
                self._close_body()
                self._end = self._next
                return b""
            self._next += len(data)
            if self._next >= self._window_end:
                self._close_body()
            return data
        return b""

    def _close_body(self) -> None:
        body, self._body = self._body, None
        if body is not None:
            body.close()

    def close(self) -> None:
        self._close_body()
        self._end = self._next


def open_bucket(endpoint: str, bucket: str, prefix: str) -> S3Store:
    """The bucket the ``--recordings-s3-*`` settings name (the GC's and the processors').
    ``ValueError`` naming the setting that is wrong, or boto3's absence (the ``s3`` extra)."""
    if not bucket:
        raise ValueError("--recordings-s3-endpoint needs --recordings-s3-bucket")
    try:
        return S3Store.connect(endpoint, bucket, prefix)
    except ValueError as exc:
        raise ValueError(f"--recordings-s3-*: {exc}") from None
    except ImportError:
        raise ValueError(
            "--recordings-s3-endpoint needs boto3: pip install 'darktower[s3]'"
        ) from None
