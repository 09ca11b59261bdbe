"""The GC's persistent secrets: Ed25519 signing keys and the development TLS certificate.

Both are created in the data directory on first start (private files mode 0600, never through
a symlink) and reused afterwards, so tokens issued before a restart stay valid and browsers
that pinned the dev certificate's SHA-256 keep connecting. Plain file I/O, done once at startup.

**Join-key rotation** (docs/decisions.md, "Join keys rotate with an overlap"): the public
halves of the join keys the GC has signed with are recorded in ``DATA_DIR/join-keys.json``.
When the GC starts with a join key other than the one recorded as current (the key file was
replaced, e.g. by ``python -m darktower.global keys rotate``), the recorded one is retired at
that moment and stays published to MCs, so its tokens keep verifying, for
``--join-key-overlap-s``. Only public keys are kept: the old private key is not needed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import sys
from collections.abc import Sequence
from typing import Any, TextIO

import attrs
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from darktower import config
from darktower.global_controller.settings import Settings
from darktower.protocol.tokens import (
    MAX_JOIN_KEYS,
    JoinKey,
    generate_signing_key,
    key_id,
    load_private_key_file,
    private_key_pem,
    public_key_pem,
)
from darktower.transport import TlsCredentials, generate_dev_certificate, write_private_file

JOIN_KEY_FILE = "join-key.pem"
JOIN_KEY_HISTORY_FILE = "join-keys.json"
# A history file larger than this is not ours: it is ignored (and rewritten), not parsed.
MAX_HISTORY_BYTES = 64 * 1024
ACCESS_KEY_FILE = "access-key.pem"
DEV_CERT_FILE = "cert.pem"
DEV_KEY_FILE = "key.pem"
# A saved dev certificate this close to expiry is replaced at start, so a running GC does not
# serve one that expires under it in the next day.
DEV_CERT_RENEW_BEFORE = datetime.timedelta(days=1)


def write_private(path: pathlib.Path, data: bytes) -> None:
    """Write ``data`` to a new file readable by its owner only (0600 from the start), never
    through a symlink (``OSError`` if one is at ``path``): see :func:`write_private_file`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_private_file(path, data)


def load_or_create_signing_key(path: pathlib.Path) -> Ed25519PrivateKey:
    """The Ed25519 key in ``path``, generated there first if the file does not exist."""
    if path.exists():
        return load_private_key_file(path)
    key = generate_signing_key()
    write_private(path, private_key_pem(key))
    return key


@attrs.frozen
class TlsFiles:
    certfile: str
    keyfile: str
    credentials: TlsCredentials
    generated: bool  # a development certificate (its SHA-256 is worth pinning)


def load_or_create_tls(
    certfile: str,
    keyfile: str,
    data_dir: pathlib.Path,
    *,
    now: datetime.datetime | None = None,
) -> TlsFiles:
    """The configured certificate, else the dev certificate saved in ``data_dir``, renewed
    when it expires within :data:`DEV_CERT_RENEW_BEFORE`. Raises ``ValueError`` if only one
    of ``certfile`` / ``keyfile`` is given, ``OSError`` if they cannot be read."""
    if certfile or keyfile:
        if not (certfile and keyfile):
            raise ValueError("certfile and keyfile must be given together")
        return TlsFiles(certfile, keyfile, TlsCredentials.from_files(certfile, keyfile), False)
    now = now or datetime.datetime.now(datetime.UTC)
    cert_path, key_path = data_dir / DEV_CERT_FILE, data_dir / DEV_KEY_FILE
    creds: TlsCredentials | None = None
    if cert_path.exists() and key_path.exists():
        try:
            creds = TlsCredentials.from_files(cert_path, key_path)
            expires = creds.certificate().not_valid_after_utc
            if expires - now < DEV_CERT_RENEW_BEFORE:
                creds = None
        except ValueError:
            creds = None  # unreadable: replace it
    if creds is None:
        creds = generate_dev_certificate(now=now)
        data_dir.mkdir(parents=True, exist_ok=True)
        write_private(key_path, creds.private_key_pem)
        write_private_file(cert_path, creds.certificate_pem, mode=0o644)  # public
    return TlsFiles(str(cert_path), str(key_path), creds, True)


# --- join-key history and rotation ------------------------------------------------------------
def join_key_path(settings: Settings) -> pathlib.Path:
    """The join key file in effect: ``--join-key-file``, else ``DATA_DIR/join-key.pem``."""
    return pathlib.Path(settings.join_key_file or settings.data_path / JOIN_KEY_FILE)


def _read_history(path: pathlib.Path) -> list[dict[str, Any]]:
    """The recorded keys, newest first; an unreadable or foreign file counts as empty (the
    worst outcome is that a retired key is no longer accepted: joins fail, nothing leaks)."""
    try:
        if path.stat().st_size > MAX_HISTORY_BYTES:
            return []
        data = json.loads(path.read_text())
        entries = data["keys"]
        out = []
        for entry in entries[:MAX_JOIN_KEYS]:
            retired = entry.get("retired_at")
            JoinKey.from_pem(entry["kid"], entry["public_key_pem"])  # ValueError if not ours
            if retired is not None and not isinstance(retired, int | float):
                raise ValueError("retired_at is not a number")
            out.append(
                {
                    "kid": entry["kid"],
                    "public_key_pem": entry["public_key_pem"],
                    "retired_at": retired,
                }
            )
        return out
    except FileNotFoundError:
        return []
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return []


def _write_history(path: pathlib.Path, entries: list[dict[str, Any]]) -> None:
    write_private(path, (json.dumps({"keys": entries}, indent=1) + "\n").encode())


def _entry(key: Ed25519PrivateKey, retired_at: float | None = None) -> dict[str, Any]:
    return {
        "kid": key_id(key),
        "public_key_pem": public_key_pem(key).decode("ascii"),
        "retired_at": retired_at,
    }


def previous_join_keys(
    data_dir: pathlib.Path, current: Ed25519PrivateKey, *, now: float, overlap_s: float
) -> tuple[JoinKey, ...]:
    """The join keys retired less than ``overlap_s`` ago, newest first, to publish beside
    ``current``; records ``current`` as the key in use. A recorded current key other than
    ``current`` is retired at ``now``. Keys past their overlap are forgotten."""
    path = data_dir / JOIN_KEY_HISTORY_FILE
    kid = key_id(current)
    kept: list[dict[str, Any]] = []
    for entry in _read_history(path):
        if entry["kid"] == kid:
            continue  # back in use (or still in use)
        retired_at = now if entry["retired_at"] is None else float(entry["retired_at"])
        if retired_at + overlap_s > now:
            kept.append({**entry, "retired_at": retired_at})
    kept = kept[: MAX_JOIN_KEYS - 1]
    _write_history(path, [_entry(current), *kept])
    return tuple(
        JoinKey.from_pem(e["kid"], e["public_key_pem"], not_after=e["retired_at"] + overlap_s)
        for e in kept
    )


def rotate_join_key(settings: Settings) -> tuple[str, str | None]:
    """Write a new join key over the one in effect (atomically, 0600); return the new and the
    old key ids. The old key is recorded first, so the GC's next start retires it with an
    overlap even if it never recorded it. The running GC goes on signing with the old key
    until it restarts. ``OSError`` if the file cannot be written (a symlink is refused)."""
    path = join_key_path(settings)
    history = settings.data_path / JOIN_KEY_HISTORY_FILE
    old_kid = None
    if path.exists():
        old = load_private_key_file(path)
        old_kid = key_id(old)
        entries = _read_history(history)
        if not any(e["kid"] == old_kid for e in entries):
            _write_history(history, [_entry(old), *entries][:MAX_JOIN_KEYS])
    new = generate_signing_key()
    write_private(path, private_key_pem(new))
    return key_id(new), old_kid


def main(argv: Sequence[str], *, prog: str, out: TextIO | None = None) -> int:
    """``argv`` after ``keys``: ``rotate | list`` then settings flags."""
    out = sys.stdout if out is None else out  # read at call time (tests replace it)
    parser = argparse.ArgumentParser(
        prog=f"{prog} keys",
        description="Rotate the join-token signing key. Settings flags after the command "
        "choose the key file and data directory, as for the service.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser(
        "rotate", help="write a new join key; restart the GC to sign with it (no join breaks)"
    )
    sub.add_parser("list", help="list the recorded join keys (kid, status)")
    args, rest = parser.parse_known_args(argv)
    settings = config.load(Settings, rest, prog=f"{prog} keys {args.command}")
    try:
        if args.command == "rotate":
            new_kid, old_kid = rotate_join_key(settings)
            print(f"new join key: kid {new_kid} in {join_key_path(settings)}", file=out)
            if old_kid is not None:
                print(
                    f"previous key {old_kid}: its tokens keep verifying for "
                    f"{settings.join_key_overlap_s:.0f} s after the GC's next start",
                    file=out,
                )
            print("restart the GC (every replica sharing this key) to sign with it", file=out)
        else:
            path = join_key_path(settings)
            on_file = key_id(load_private_key_file(path)) if path.exists() else None
            entries = _read_history(settings.data_path / JOIN_KEY_HISTORY_FILE)
            if on_file is not None and not any(e["kid"] == on_file for e in entries):
                print(f"{on_file}\tin {path}, signing from the GC's next start", file=out)
            for entry in entries:
                retired = entry["retired_at"]
                status = "signing" if retired is None else f"retired at {retired:.0f} (unix s)"
                if retired is None and on_file is not None and entry["kid"] != on_file:
                    status = "signing until the GC's next start"
                print(f"{entry['kid']}\t{status}", file=out)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
