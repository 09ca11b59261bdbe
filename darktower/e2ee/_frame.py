"""Frame encryption: one generation's keys, and the sending side's :class:`SenderKey`.

An encrypted payload is ``PREFIX || AES-GCM ciphertext || tag``, PREFIX being version (1 byte),
generation (uint32) and counter (uint64), all big-endian. The nonce is the generation's salt
XOR the counter; the associated data is the frame's 46-byte header as on the wire (its
payload length the encrypted one) followed by PREFIX.
"""

from __future__ import annotations

import os
import struct
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from darktower.e2ee._primitives import (
    FORMAT_VERSION,
    FRAME_KEY_SIZE,
    LABEL_FRAME_KEY,
    LABEL_FRAME_SALT,
    LABEL_RATCHET,
    MAX_COUNTER,
    MAX_GENERATION,
    NONCE_SIZE,
    OVERHEAD,
    PREFIX_SIZE,
    SECRET_SIZE,
    E2EEError,
    check_generation,
    check_secret,
    hkdf,
)
from darktower.frames import HEADER_SIZE, FrameFlags, FrameHeader

# The largest plaintext one encrypted frame carries: an encrypted frame is one part, and the
# MH takes payloads up to 1 MiB.
MAX_PLAINTEXT: Final = 1024 * 1024 - OVERHEAD

PREFIX: Final = struct.Struct(">BIQ")
_NONCE: Final = struct.Struct(">IQ")
_U32: Final = struct.Struct(">I")
_LENGTH_OFFSET: Final = 34  # payload length in the frame header
_FLAGS_LOW_OFFSET: Final = 39  # the flags' low byte, END_OF_FRAME's
_AAD_SIZE: Final = HEADER_SIZE + PREFIX_SIZE
assert PREFIX.size == PREFIX_SIZE
assert int(FrameFlags.END_OF_FRAME) == 1


def ratchet_secret(secret: bytes) -> bytes:
    """S' = the next generation's secret after a join; one-way."""
    return hkdf(secret, LABEL_RATCHET, SECRET_SIZE)


class GenerationKeys:
    """One (sender, generation)'s derived keys, computed once: the AES-GCM object and the salt
    split for the nonce, so a frame costs no derivation."""

    __slots__ = ("_aead", "_salt_high", "_salt_low", "generation", "secret")

    generation: int
    secret: bytes

    def __init__(self, secret: bytes, generation: int) -> None:
        check_secret(secret)
        check_generation(generation)
        self.secret = bytes(secret)
        self.generation = generation
        self._aead = AESGCM(hkdf(secret, LABEL_FRAME_KEY, FRAME_KEY_SIZE))
        salt = hkdf(secret, LABEL_FRAME_SALT, NONCE_SIZE)
        self._salt_high, self._salt_low = _NONCE.unpack(salt)

    def nonce(self, counter: int) -> bytes:
        """SALT XOR (4 zero bytes || counter as 8 bytes big-endian)."""
        return _NONCE.pack(self._salt_high, self._salt_low ^ counter)

    def seal(self, header: bytes, counter: int, payload: bytes | bytearray | memoryview) -> bytes:
        """The wire frame: ``header`` (46 bytes, already with the encrypted length) || PREFIX
        || ciphertext || tag."""
        aad = header + PREFIX.pack(FORMAT_VERSION, self.generation, counter)
        return aad + self._aead.encrypt(self.nonce(counter), payload, aad)

    def open(self, raw: memoryview, counter: int) -> bytes | None:
        """The plaintext of the encrypted wire frame ``raw`` (counter already read from its
        PREFIX), or None when its tag does not verify."""
        try:
            return self._aead.decrypt(self.nonce(counter), raw[_AAD_SIZE:], raw[:_AAD_SIZE])
        except InvalidTag:
            return None

    def ratchet(self) -> GenerationKeys:
        """The keys of the next generation, derived from this one's secret."""
        if self.generation >= MAX_GENERATION:
            raise E2EEError("the last generation cannot be ratcheted")
        return GenerationKeys(ratchet_secret(self.secret), self.generation + 1)


class SenderKey:
    """A publisher's sender secret S at generation g, and the counter of the frames sent with
    it (0, 1, 2, ... over all of the publisher's streams; never repeated for a key).

    :meth:`rotate` (someone left: a fresh random secret) and :meth:`ratchet` (someone joined:
    S' derived from S) both move to generation g + 1 and restart the counter. Not thread-safe:
    one sender key belongs to one publishing client.
    """

    __slots__ = ("_counter", "_keys")

    def __init__(self, secret: bytes, generation: int = 0, *, counter: int = 0) -> None:
        """A sender key of ``secret`` at ``generation``; ``counter`` (the next frame's) is for
        test vectors: a real sender starts every generation at 0."""
        self._keys = GenerationKeys(secret, generation)
        if not 0 <= counter <= MAX_COUNTER:
            raise E2EEError(f"counter {counter} is not a uint64")
        self._counter = counter

    @classmethod
    def new(cls) -> SenderKey:
        """A fresh random secret at generation 0 (a join)."""
        return cls(os.urandom(SECRET_SIZE), 0)

    @property
    def generation(self) -> int:
        return self._keys.generation

    @property
    def secret(self) -> bytes:
        return self._keys.secret

    @property
    def counter(self) -> int:
        """The counter the next frame gets."""
        return self._counter

    def rotate(self) -> None:
        """A fresh random secret at the next generation (after a leave or a kick). Raises
        :class:`E2EEError` at the last generation (the client must leave)."""
        if self.generation >= MAX_GENERATION:
            raise E2EEError("the last generation cannot be rotated")
        self._keys = GenerationKeys(os.urandom(SECRET_SIZE), self.generation + 1)
        self._counter = 0

    def ratchet(self) -> None:
        """S := S', the next generation (after a join). Raises :class:`E2EEError` at the last
        generation (the client must leave)."""
        self._keys = self._keys.ratchet()
        self._counter = 0

    def encrypt(self, header: FrameHeader, payload: bytes | bytearray | memoryview) -> bytes:
        """The whole wire frame of ``payload`` encrypted: ``header`` with ``payload_length =
        len(payload) + OVERHEAD`` and END_OF_FRAME set (an encrypted frame is one part), then
        the encrypted payload. Raises ``ValueError`` for a payload over :data:`MAX_PLAINTEXT`
        and :class:`E2EEError` when this generation's counter is used up."""
        length = payload.nbytes if type(payload) is memoryview else len(payload)
        if length > MAX_PLAINTEXT:
            raise ValueError(f"plaintext of {length} bytes over the limit of {MAX_PLAINTEXT}")
        counter = self._counter
        if counter > MAX_COUNTER:
            raise E2EEError("this generation's frame counter is used up: rotate")
        self._counter = counter + 1
        wire_header = bytearray(header.encode())
        _U32.pack_into(wire_header, _LENGTH_OFFSET, length + OVERHEAD)
        wire_header[_FLAGS_LOW_OFFSET] |= 1
        return self._keys.seal(bytes(wire_header), counter, payload)
