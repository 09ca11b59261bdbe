"""TLS credentials: loaded from PEM files, or a generated short-lived development certificate.

Browsers accept a self-signed certificate through ``serverCertificateHashes`` only when it is
ECDSA P-256 and valid at most 14 days; the development certificate is valid 13.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import hashlib
import ipaddress
import os
import pathlib
import secrets
import stat

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.oid import NameOID

DEV_CERT_VALIDITY = datetime.timedelta(days=13)
# Backdated so that a clock slightly behind ours still sees the certificate as valid.
DEV_CERT_BACKDATE = datetime.timedelta(minutes=5)


@attrs.frozen
class TlsCredentials:
    """A certificate chain and its private key, both PEM."""

    certificate_pem: bytes
    private_key_pem: bytes

    @classmethod
    def from_files(
        cls, certfile: str | pathlib.Path, keyfile: str | pathlib.Path
    ) -> TlsCredentials:
        return cls(pathlib.Path(certfile).read_bytes(), pathlib.Path(keyfile).read_bytes())

    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.certificate_pem)

    def chain(self) -> list[x509.Certificate]:
        return x509.load_pem_x509_certificates(self.certificate_pem)[1:]

    def private_key(self) -> PrivateKeyTypes:
        return serialization.load_pem_private_key(self.private_key_pem, password=None)

    @property
    def sha256(self) -> bytes:
        """SHA-256 of the DER certificate: the browser's ``serverCertificateHashes`` value."""
        return certificate_sha256(self.certificate())

    def write(self, directory: str | pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
        """Write ``cert.pem`` (0644) and ``key.pem`` (0600) into ``directory`` with
        :func:`write_private_file`; return their paths. ``OSError`` if a symlink is in the way."""
        base = pathlib.Path(directory)
        certfile, keyfile = base / "cert.pem", base / "key.pem"
        write_private_file(keyfile, self.private_key_pem)
        write_private_file(certfile, self.certificate_pem, mode=PUBLIC_FILE_MODE)
        return certfile, keyfile


PRIVATE_FILE_MODE = 0o600  # keys and secrets: the owner only
PUBLIC_FILE_MODE = 0o644  # certificates: anyone may read them


def write_private_file(
    path: str | pathlib.Path, data: bytes, *, mode: int = PRIVATE_FILE_MODE
) -> None:
    """Write ``data`` to ``path`` as a new file with ``mode`` (owner-only by default), never
    through a symlink.

    The bytes go to a fresh, unguessable name in the same directory, created with
    ``O_CREAT | O_EXCL | O_NOFOLLOW`` and ``mode`` from the start (so nobody can open it in
    between, and a symlink planted there is not followed), are synced, then renamed over
    ``path`` (atomic: a crash never leaves half a key). A symlink at ``path`` itself is refused
    with ``OSError`` (``ELOOP``): a planted one must not decide where a secret goes, and a
    deliberate one is the operator's to resolve. Plain file I/O, for start-up and CLI use.
    """
    path = pathlib.Path(path)
    if path.is_symlink():
        raise OSError(errno.ELOOP, f"refusing to write {path}: it is a symlink", str(path))
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(tmp, flags, mode)
    try:
        try:
            os.fchmod(fd, mode)  # exactly ``mode``, whatever the umask took away
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        # Checked again right before the rename: replacing a symlink would not follow it
        # either, but the refusal should not depend on who won a race.
        if os.path.lexists(path) and stat.S_ISLNK(os.lstat(path).st_mode):
            raise OSError(errno.ELOOP, f"refusing to write {path}: it is a symlink", str(path))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def certificate_sha256(certificate: x509.Certificate) -> bytes:
    return hashlib.sha256(certificate.public_bytes(serialization.Encoding.DER)).digest()


def generate_dev_certificate(
    hostnames: tuple[str, ...] = ("localhost",),
    addresses: tuple[str, ...] = ("127.0.0.1", "::1"),
    *,
    now: datetime.datetime | None = None,
) -> TlsCredentials:
    """A self-signed ECDSA P-256 certificate valid 13 days, for development and tests."""
    now = now or datetime.datetime.now(datetime.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "darktower-dev")])
    san: list[x509.GeneralName] = [x509.DNSName(h) for h in hostnames]
    san += [x509.IPAddress(ipaddress.ip_address(a)) for a in addresses]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - DEV_CERT_BACKDATE)
        .not_valid_after(now - DEV_CERT_BACKDATE + DEV_CERT_VALIDITY)
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return TlsCredentials(
        certificate_pem=cert.public_bytes(serialization.Encoding.PEM),
        private_key_pem=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
