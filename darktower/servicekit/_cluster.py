"""Trust between services: the cluster CA, one certificate per service, and the TLS contexts
every internal gRPC server and channel uses (docs/architecture.md §8).

A service certificate names its holder in one URI subject alternative name,
``darktower://<role>/<id>`` (``role`` is ``gc``, ``mc`` or ``mh``; ``id`` the controller or
handler id it registers with, or the GC's name). Both ends of every connection present one and
verify the other's against the cluster CA; host names are not checked (services are reached by
whatever address they registered), the identity in the certificate is.

This module makes and reads certificates and builds ``ssl`` contexts; which identity may call
what is ``_peers.py``.
"""

from __future__ import annotations

import datetime
import enum
import pathlib
import re
import ssl
import tempfile
from collections.abc import Mapping
from typing import Any

import attrs
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from darktower.transport import write_private_file

IDENTITY_SCHEME = "darktower"
# What an id in a certificate may be: the ids services register with, ASCII for the URI.
ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
CA_VALIDITY = datetime.timedelta(days=3650)
SERVICE_VALIDITY = datetime.timedelta(days=365)
# Backdated so that a clock slightly behind the issuer's still sees the certificate as valid.
BACKDATE = datetime.timedelta(minutes=5)
# Internal gRPC speaks HTTP/2 over TLS 1.3 only: both ends are ours.
ALPN = ["h2"]


class ServiceRole(enum.StrEnum):
    GC = "gc"
    MC = "mc"
    MH = "mh"
    MP = "mp"  # a media processor (docs/architecture.md §10)


@attrs.frozen
class ServiceIdentity:
    """Who holds a service certificate: its role and id."""

    role: ServiceRole = attrs.field(converter=ServiceRole)
    id: str = attrs.field()

    def __attrs_post_init__(self) -> None:
        if not ID_PATTERN.fullmatch(self.id):
            raise ValueError(
                f"a service id is 1 to 128 of A-Z a-z 0-9 . _ - (starting with a letter or "
                f"digit), not {self.id!r}"
            )

    @property
    def uri(self) -> str:
        return f"{IDENTITY_SCHEME}://{self.role}/{self.id}"

    def __str__(self) -> str:
        return f"{self.role}/{self.id}"

    @classmethod
    def parse(cls, uri: str) -> ServiceIdentity:
        """``darktower://ROLE/ID`` → the identity; ``ValueError`` for anything else."""
        prefix = f"{IDENTITY_SCHEME}://"
        role, sep, ident = uri.removeprefix(prefix).partition("/")
        if not uri.startswith(prefix) or not sep:
            raise ValueError(f"not a service identity: {uri!r}")
        return cls(ServiceRole(role), ident)


def identity_of_certificate(cert: Mapping[str, Any] | None) -> ServiceIdentity | None:
    """The identity in a verified peer certificate as ``SSLSocket.getpeercert()`` gives it:
    its one ``darktower://`` URI subject alternative name; None if it has none, several, or
    one that does not parse (or there is no certificate)."""
    if not cert:
        return None
    uris = [
        value
        for kind, value in cert.get("subjectAltName", ())
        if kind == "URI" and str(value).startswith(f"{IDENTITY_SCHEME}://")
    ]
    if len(uris) != 1:
        return None
    try:
        return ServiceIdentity.parse(uris[0])
    except ValueError:
        return None


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _load_ec_key(pem: bytes) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError("the key is not an ECDSA key")
    return key


@attrs.frozen
class ClusterCa:
    """The cluster's certificate authority: its certificate and private key (PEM)."""

    cert_pem: bytes
    key_pem: bytes = attrs.field(repr=False)

    CERT_FILE = "ca.pem"
    KEY_FILE = "ca-key.pem"

    @classmethod
    def create(
        cls, name: str = "Dark Tower cluster CA", *, now: datetime.datetime | None = None
    ) -> ClusterCa:
        """A new CA (ECDSA P-256, valid ten years) that signs service certificates only."""
        now = now or _now()
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        public = key.public_key()
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(now + CA_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))

    @classmethod
    def load(cls, directory: str | pathlib.Path) -> ClusterCa:
        """The CA in ``directory`` (``ca.pem``, ``ca-key.pem``); ``OSError``/``ValueError``."""
        base = pathlib.Path(directory)
        ca = cls((base / cls.CERT_FILE).read_bytes(), (base / cls.KEY_FILE).read_bytes())
        _load_ec_key(ca.key_pem)
        x509.load_pem_x509_certificate(ca.cert_pem)
        return ca

    def write(self, directory: str | pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
        """Write ``ca.pem`` (0644) and ``ca-key.pem`` (0600, the owner only) into
        ``directory`` (created 0700 if missing); ``FileExistsError`` if a CA is there already
        (a new CA would silently distrust every certificate issued)."""
        base = pathlib.Path(directory)
        base.mkdir(mode=0o700, parents=True, exist_ok=True)
        certfile, keyfile = base / self.CERT_FILE, base / self.KEY_FILE
        for path in (certfile, keyfile):
            if path.exists() or path.is_symlink():
                raise FileExistsError(f"{path} exists: the cluster CA is made once")
        write_private_file(keyfile, self.key_pem)
        write_private_file(certfile, self.cert_pem, mode=0o644)
        return certfile, keyfile

    def issue(
        self,
        identity: ServiceIdentity,
        *,
        validity: datetime.timedelta = SERVICE_VALIDITY,
        now: datetime.datetime | None = None,
    ) -> ClusterTls:
        """A new key and a certificate naming ``identity``, signed by this CA (valid for
        ``validity``), for both ends of a connection (server and client authentication)."""
        now = now or _now()
        ca_cert = x509.load_pem_x509_certificate(self.cert_pem)
        ca_key = _load_ec_key(self.key_pem)
        key = ec.generate_private_key(ec.SECP256R1())
        public = key.public_key()
        cert = (
            x509.CertificateBuilder()
            .subject_name(
                x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"darktower {identity}")])
            )
            .issuer_name(ca_cert.subject)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(min(now + validity, ca_cert.not_valid_after_utc))
            .add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity.uri)]),
                critical=False,
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())
        )
        return ClusterTls(
            ca_pem=self.cert_pem,
            cert_pem=cert.public_bytes(serialization.Encoding.PEM),
            key_pem=_key_pem(key),
        )


def _identity_in(cert_pem: bytes) -> ServiceIdentity:
    cert = x509.load_pem_x509_certificate(cert_pem)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise ValueError("the certificate names no service (no subjectAltName)") from None
    uris = [
        u
        for u in san.get_values_for_type(x509.UniformResourceIdentifier)
        if u.startswith(f"{IDENTITY_SCHEME}://")
    ]
    if len(uris) != 1:
        raise ValueError(f"the certificate must name one service ({IDENTITY_SCHEME}://ROLE/ID)")
    return ServiceIdentity.parse(uris[0])


@attrs.frozen
class ClusterTls:
    """What one service needs for mutual TLS: the cluster CA's certificate, its own
    certificate and key (PEM), and the identity its certificate names."""

    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes = attrs.field(repr=False)

    def __attrs_post_init__(self) -> None:
        _identity_in(self.cert_pem)  # ValueError now rather than at the first connection

    @property
    def identity(self) -> ServiceIdentity:
        return _identity_in(self.cert_pem)

    @classmethod
    def from_files(
        cls, ca: str | pathlib.Path, cert: str | pathlib.Path, key: str | pathlib.Path
    ) -> ClusterTls:
        """Read and check the three PEM files: ``OSError`` if one cannot be read,
        ``ValueError`` if the certificate names no service, was not issued by the CA, or
        does not match the key."""
        tls = cls(
            pathlib.Path(ca).read_bytes(),
            pathlib.Path(cert).read_bytes(),
            pathlib.Path(key).read_bytes(),
        )
        tls.check()
        return tls

    def check(self) -> None:
        """``ValueError`` unless the certificate was signed by the CA and matches the key."""
        ca = x509.load_pem_x509_certificate(self.ca_pem)
        cert = x509.load_pem_x509_certificate(self.cert_pem)
        try:
            cert.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature):
            raise ValueError(
                f"the certificate of {self.identity} was not issued by the cluster CA"
            ) from None
        if cert.public_key() != _load_ec_key(self.key_pem).public_key():
            raise ValueError(f"the key does not belong to the certificate of {self.identity}")

    def write(
        self, directory: str | pathlib.Path, stem: str = ""
    ) -> tuple[pathlib.Path, pathlib.Path]:
        """Write ``<stem>.pem`` (0644) and ``<stem>-key.pem`` (0600) into ``directory``
        (``stem`` defaults to ``ROLE-ID``); return their paths."""
        base = pathlib.Path(directory)
        stem = stem or f"{self.identity.role}-{self.identity.id}"
        certfile, keyfile = base / f"{stem}.pem", base / f"{stem}-key.pem"
        write_private_file(keyfile, self.key_pem)
        write_private_file(certfile, self.cert_pem, mode=0o644)
        return certfile, keyfile

    def server_context(self) -> ssl.SSLContext:
        """For ``serve_rpc``: presents our certificate, requires the client's (cluster CA)."""
        return self._context(ssl.PROTOCOL_TLS_SERVER)

    def client_context(self) -> ssl.SSLContext:
        """For ``open_rpc_channel``: presents our certificate, requires the server's (cluster
        CA); the server's identity is checked by the channel's ``check_peer``, not its name."""
        return self._context(ssl.PROTOCOL_TLS_CLIENT)

    def _context(self, protocol: ssl._SSLMethod) -> ssl.SSLContext:
        context = ssl.SSLContext(protocol)
        context.minimum_version = ssl.TLSVersion.TLSv1_3
        context.check_hostname = False  # set before verify_mode: the identity is the SAN URI
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cadata=self.ca_pem.decode("ascii"))
        context.set_alpn_protocols(ALPN)
        # ssl loads a key only from a file: a private directory that lives for this call.
        with tempfile.TemporaryDirectory(prefix="darktower-tls-") as directory:
            certfile, keyfile = self.write(directory, "service")
            context.load_cert_chain(certfile, keyfile)
        return context
