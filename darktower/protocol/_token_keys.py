"""Ed25519 keys of the token kinds: generating, PEM forms, the ``kid`` of a join key, the set
of join keys an MC holds, and the GC's pair of signing keys (docs/protocol.md §5).

Re-exported by :mod:`darktower.protocol.tokens`, which uses them to sign and verify.
"""

from __future__ import annotations

import base64
import hashlib
import json
import pathlib
import secrets

import attrs
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

MAX_KEY_ID_LENGTH = 64  # ours are 43 characters (base64url of a SHA-256)


def generate_signing_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def public_key_pem(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    """SubjectPublicKeyInfo PEM, the form sent to MCs in ``RegisterMeetingControllerResponse``."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def private_key_pem(key: Ed25519PrivateKey) -> bytes:
    """Unencrypted PKCS#8 PEM (for writing a configuration file; protect it with file modes)."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def load_private_key_pem(data: bytes, password: bytes | None = None) -> Ed25519PrivateKey:
    """Parse a PEM private key; raises ``ValueError`` if it is not an Ed25519 key."""
    key = serialization.load_pem_private_key(data, password=password)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"expected an Ed25519 private key, got {type(key).__name__}")
    return key


def load_private_key_file(
    path: str | pathlib.Path, password: bytes | None = None
) -> Ed25519PrivateKey:
    """Read a PEM private key file named in the configuration (``ValueError`` if not Ed25519)."""
    return load_private_key_pem(pathlib.Path(path).read_bytes(), password)


def load_public_key_pem(data: bytes | str) -> Ed25519PublicKey:
    """Parse the PEM public key an MC receives; raises ``ValueError`` if it is not Ed25519."""
    raw = data.encode("ascii") if isinstance(data, str) else data
    key = serialization.load_pem_public_key(raw)
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"expected an Ed25519 public key, got {type(key).__name__}")
    return key


def public_key_raw(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    """The 32 raw bytes of an Ed25519 public key."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def key_id(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """The ``kid`` of a join key: its JWK thumbprint (RFC 7638, OKP members per RFC 8037), so
    GC replicas sharing a key agree on its id and nothing has to be stored beside it."""
    jwk = {"crv": "Ed25519", "kty": "OKP", "x": _b64url(public_key_raw(key))}
    canonical = json.dumps(jwk, separators=(",", ":"), sort_keys=True).encode("ascii")
    return _b64url(hashlib.sha256(canonical).digest())


@attrs.frozen
class JoinKey:
    """One public key verifying join tokens, as the GC publishes it to MCs.

    ``not_after`` (unix seconds) is when a retired key stops verifying (its retirement plus the
    GC's overlap); ``None`` for the key the GC signs with now.
    """

    kid: str
    public_key: Ed25519PublicKey = attrs.field(eq=False, repr=False)
    not_after: float | None = None
    # Equality by the key's bytes (cryptography's key objects compare by identity on some
    # versions).
    _raw: bytes = attrs.field(init=False, repr=False)

    @_raw.default
    def _raw_default(self) -> bytes:
        return public_key_raw(self.public_key)

    @classmethod
    def of(
        cls, key: Ed25519PrivateKey | Ed25519PublicKey, *, not_after: float | None = None
    ) -> JoinKey:
        public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
        return cls(key_id(public), public, not_after)

    @classmethod
    def from_pem(cls, kid: str, pem: bytes | str, *, not_after: float | None = None) -> JoinKey:
        """As received from the GC; ``ValueError`` if not Ed25519 or ``kid`` is not its id."""
        key = load_public_key_pem(pem)
        if key_id(key) != kid:
            raise ValueError(f"join key id {kid[:MAX_KEY_ID_LENGTH]!r} does not match its key")
        return cls(kid, key, not_after)

    @property
    def public_key_pem(self) -> bytes:
        return public_key_pem(self.public_key)

    def retired(self, now: float, leeway_s: float = 0.0) -> bool:
        return self.not_after is not None and now >= self.not_after + leeway_s


def _raw(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )


@attrs.frozen
class GcSigningKeys:
    """The GC's two signing keys; equal keys are refused so the token kinds stay separate."""

    join_key: Ed25519PrivateKey
    access_key: Ed25519PrivateKey

    def __attrs_post_init__(self) -> None:
        if secrets.compare_digest(_raw(self.join_key), _raw(self.access_key)):
            raise ValueError("the join-token key and the access-token key must differ")

    @classmethod
    def generate(cls) -> GcSigningKeys:
        return cls(join_key=generate_signing_key(), access_key=generate_signing_key())
