"""The GC's persistent secrets: Ed25519 signing keys and the development TLS certificate.

Both are created in the data directory on first start (private files mode 0600) and reused
afterwards, so tokens issued before a restart stay valid and browsers that pinned the dev
certificate's SHA-256 keep connecting. Plain file I/O, done once at startup.
"""

from __future__ import annotations

import datetime
import pathlib

import attrs
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from darktower.protocol.tokens import (
    generate_signing_key,
    load_private_key_file,
    private_key_pem,
)
from darktower.transport import TlsCredentials, generate_dev_certificate, write_private_file

JOIN_KEY_FILE = "join-key.pem"
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
