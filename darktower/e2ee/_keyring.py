"""The receiving side: every sender's keys by generation, frames waiting for a key, drops.

Sans-IO: time is passed in as ``now`` (seconds, any monotonic clock) and nothing here sleeps or
schedules; a caller that wants the bounds enforced while no frame arrives calls
:meth:`Keyring.expire` at :meth:`Keyring.next_deadline`. Nothing on the receive path raises:
a frame decrypts, waits, or is dropped and counted by reason.
"""

from __future__ import annotations

import collections
import math
from typing import Final

from darktower.e2ee._frame import PREFIX, GenerationKeys
from darktower.e2ee._primitives import (
    FORMAT_VERSION,
    MAX_GENERATION,
    MAX_GENERATION_STEP,
    OVERHEAD,
    SECRET_SIZE,
)
from darktower.frames import HEADER_SIZE, Frame, FrameError

# Drop reasons, the keys of Keyring.drops.
AUTH_FAILED: Final = "auth_failed"  # a known key, a tag that does not verify
NO_KEY: Final = "no_key"  # waited for its key and did not get it in time or room
STALE_KEY: Final = "stale_key"  # a generation older than the newest, no longer (or never) held
MALFORMED: Final = "malformed"  # shorter than the overhead, or an unknown format version
BAD_SHARE: Final = "bad_share"  # a share that did not open, or names an old generation
DROP_REASONS: Final = (AUTH_FAILED, NO_KEY, STALE_KEY, MALFORMED, BAD_SHARE)

# Limits per sender. Frames of a generation not yet known wait for its key share (a rotation's
# fresh key travels through the MC while the sender already uses it). Policy when full: the
# oldest waiting frame is dropped and counted NO_KEY.
PENDING_MAX_AGE_S: Final = 2.0
PENDING_MAX_FRAMES: Final = 64
PENDING_MAX_BYTES: Final = 4 * 1024 * 1024
# Older generations stay usable this long after a newer one first decrypts a frame (frames in
# flight across a rotation), and at most this many besides the newest. Policy: the oldest is
# erased first; its frames are then dropped and counted STALE_KEY.
OLD_KEY_GRACE_S: Final = 5.0
MAX_OLD_GENERATIONS: Final = 4

_LENGTH_OFFSET: Final = 34  # the payload length in the frame header
_LENGTH_END: Final = 38


def _plain_frame(frame: Frame, plaintext: bytes) -> Frame:
    """The decrypted frame: the same header bytes, payload length ``len(plaintext)``."""
    raw = frame.raw
    length = len(plaintext)
    wire = b"".join(
        (raw[:_LENGTH_OFFSET], length.to_bytes(4, "big"), raw[_LENGTH_END:HEADER_SIZE], plaintext)
    )
    view = memoryview(wire)
    # Frame's own constructor, as its decoder uses it: the header fields are the received
    # frame's (already checked when it was decoded) with the new length, so nothing is parsed
    # again (Frame.from_wire would cost twice the decryption of a small frame).
    fields = frame._fields
    return Frame(view, view[HEADER_SIZE:], (*fields[:5], length, fields[6]))


class _Sender:
    """One sender's keys, the keys a ratchet would give, and the frames waiting for a key."""

    __slots__ = (
        "candidates",
        "deadline",
        "keys",
        "newest",
        "pending",
        "pending_bytes",
        "retire_at",
        "used",
    )

    def __init__(self) -> None:
        self.keys: dict[int, GenerationKeys] = {}
        self.newest = -1  # the newest generation held, -1 for none
        self.used = -1  # the newest generation a frame decrypted with
        self.retire_at: dict[int, float] = {}  # older generation -> when it is erased
        # Generations newest+1 .. newest+MAX_GENERATION_STEP derived by ratchet, not yet
        # confirmed by a frame (kept so that later frames of a generation cost no derivation).
        self.candidates: dict[int, GenerationKeys] = {}
        self.pending: collections.deque[tuple[float, int, Frame]] = collections.deque()
        self.pending_bytes = 0
        self.deadline = math.inf

    def refresh_deadline(self) -> None:
        first = self.pending[0][0] + PENDING_MAX_AGE_S if self.pending else math.inf
        self.deadline = min(first, *self.retire_at.values()) if self.retire_at else first

    def candidate(self, generation: int) -> GenerationKeys:
        """The keys ``generation`` (newer than the newest, within the step) would have if the
        sender ratcheted to it."""
        keys = self.candidates.get(generation)
        if keys is None:
            step = generation - 1
            while step not in self.candidates and step > self.newest:
                step -= 1
            keys = self.candidates[step] if step > self.newest else self.keys[self.newest]
            while keys.generation < generation:
                keys = keys.ratchet()
                self.candidates[keys.generation] = keys
        return keys

    def adopt(self, generation: int) -> None:
        """A ratchet to ``generation`` verified: it and the generations before it are held."""
        for step in range(self.newest + 1, generation + 1):
            self.keys[step] = self.candidates.pop(step)
        self.newest = generation
        self.trim()

    def hold(self, keys: GenerationKeys) -> None:
        """A shared key newer than the newest."""
        self.keys[keys.generation] = keys
        self.newest = keys.generation
        self.candidates.clear()
        self.trim()

    def trim(self) -> None:
        older = sorted(g for g in self.keys if g < self.newest)
        for generation in older[: max(0, len(older) - MAX_OLD_GENERATIONS)]:
            self.erase(generation)

    def erase(self, generation: int) -> None:
        del self.keys[generation]
        self.retire_at.pop(generation, None)

    def mark_used(self, generation: int, now: float) -> None:
        if generation <= self.used:
            return
        self.used = generation
        deadline = now + OLD_KEY_GRACE_S
        for older in self.keys:
            if older < generation and older not in self.retire_at:
                self.retire_at[older] = deadline
        self.refresh_deadline()


class Keyring:
    """Every sender's frame keys on one client, for one meeting.

    :meth:`add` takes a sender secret from a key share (already opened) and releases the
    frames that waited for it; :meth:`decrypt` turns an encrypted frame into its plaintext
    frame, or holds it for a key, or drops it and counts the reason in :attr:`drops`. A sender
    is whatever string names the stream's publisher (its participant id).
    """

    def __init__(self) -> None:
        self._senders: dict[str, _Sender] = {}
        self.drops: collections.Counter[str] = collections.Counter()

    def generations(self, sender: str) -> list[int]:
        """The generations of ``sender`` held now, oldest first."""
        state = self._senders.get(sender)
        return sorted(state.keys) if state is not None else []

    def pending(self, sender: str) -> int:
        """How many frames of ``sender`` wait for a key."""
        state = self._senders.get(sender)
        return len(state.pending) if state is not None else 0

    def add(self, sender: str, generation: int, secret: bytes, now: float) -> list[Frame]:
        """Hold ``sender``'s ``secret`` of ``generation`` (from an opened key share); returns
        the frames that waited for it, decrypted, in the order they arrived.

        The same secret again (a share repeated after a resume) changes nothing. A generation
        older than the newest held, another secret for a generation held, or a secret of the
        wrong size is ignored and counted ``bad_share``.
        """
        if len(secret) != SECRET_SIZE or not 0 <= generation <= MAX_GENERATION:
            self.drops[BAD_SHARE] += 1
            return []
        state = self._state(sender, now)
        held = state.keys.get(generation)
        if held is not None:
            if held.secret != bytes(secret):
                self.drops[BAD_SHARE] += 1
            return []
        if generation < state.newest:
            self.drops[BAD_SHARE] += 1
            return []
        state.hold(GenerationKeys(secret, generation))
        return self._release(sender, state, now)

    def decrypt(self, sender: str, frame: Frame, now: float) -> Frame | None:
        """The plaintext frame of ``sender``'s encrypted ``frame`` (the same header, its
        payload length the plaintext's), or None: held until its key arrives (returned later
        by :meth:`add`), or dropped and counted in :attr:`drops`. Never raises."""
        payload = frame.payload
        if len(payload) < OVERHEAD or payload[0] != FORMAT_VERSION:
            self.drops[MALFORMED] += 1
            return None
        state = self._state(sender, now)
        _, generation, counter = PREFIX.unpack_from(payload)
        plain = self._open(state, frame, generation, counter, now)
        if plain is None and generation > state.newest:
            self._hold(state, generation, frame, now)
        return plain

    def expire(self, now: float) -> None:
        """Drop the frames that waited too long (``no_key``) and erase the older generations
        whose time is over."""
        for state in self._senders.values():
            if now >= state.deadline:
                self._expire(state, now)

    def next_deadline(self) -> float | None:
        """When :meth:`expire` has something to do next, or None."""
        deadline = min((s.deadline for s in self._senders.values()), default=math.inf)
        return None if deadline == math.inf else deadline

    def forget(self, sender: str) -> None:
        """Erase ``sender``'s keys (it left); its waiting frames are dropped (``no_key``)."""
        state = self._senders.pop(sender, None)
        if state is not None and state.pending:
            self.drops[NO_KEY] += len(state.pending)

    def _state(self, sender: str, now: float) -> _Sender:
        state = self._senders.get(sender)
        if state is None:
            state = self._senders[sender] = _Sender()
        elif now >= state.deadline:
            self._expire(state, now)
        return state

    def _open(
        self, state: _Sender, frame: Frame, generation: int, counter: int, now: float
    ) -> Frame | None:
        """Decrypt with a held key or a ratchet of the newest; None when it is not decrypted
        (dropped and counted, unless it is newer than the newest: then the caller decides)."""
        keys = state.keys.get(generation)
        if keys is None:
            if generation < state.newest:
                self.drops[STALE_KEY] += 1
                return None
            if state.newest < 0 or generation - state.newest > MAX_GENERATION_STEP:
                return None
            keys = state.candidate(generation)
            plaintext = keys.open(frame.raw, counter)
            if plaintext is None:
                return None  # a fresh key not shared yet, or a forged frame
            state.adopt(generation)
            if state.pending:
                self._purge(state)
        else:
            plaintext = keys.open(frame.raw, counter)
            if plaintext is None:
                self.drops[AUTH_FAILED] += 1
                return None
        state.mark_used(generation, now)
        return _plain_frame(frame, plaintext)

    def _hold(self, state: _Sender, generation: int, frame: Frame, now: float) -> None:
        # A copy: the frame's view may pin a whole received chunk for the time it waits.
        try:
            kept = Frame.from_wire(bytes(frame.raw))
        except FrameError:  # only a hand-built Frame with an unreadable header gets here
            self.drops[MALFORMED] += 1
            return
        size = len(kept.raw)
        state.pending.append((now, generation, kept))
        state.pending_bytes += size
        while len(state.pending) > PENDING_MAX_FRAMES or state.pending_bytes > PENDING_MAX_BYTES:
            self._drop_oldest(state)
        state.refresh_deadline()

    def _drop_oldest(self, state: _Sender) -> None:
        _, _, old = state.pending.popleft()
        state.pending_bytes -= len(old.raw)
        self.drops[NO_KEY] += 1

    def _purge(self, state: _Sender) -> None:
        """After a ratchet verified: the frames that waited for a generation it reached had
        failed that very ratchet, so they are forged or damaged."""
        kept = collections.deque(entry for entry in state.pending if entry[1] > state.newest)
        if len(kept) < len(state.pending):
            self.drops[AUTH_FAILED] += len(state.pending) - len(kept)
            state.pending = kept
            state.pending_bytes = sum(len(frame.raw) for _, _, frame in kept)
            state.refresh_deadline()

    def _release(self, sender: str, state: _Sender, now: float) -> list[Frame]:
        """Try every waiting frame again, in order, after a new key: decrypted ones are
        released, those still newer than every key wait on, the rest are dropped."""
        waiting = state.pending
        state.pending = collections.deque()
        state.pending_bytes = 0
        released: list[Frame] = []
        for arrived, generation, frame in waiting:
            _, _, counter = PREFIX.unpack_from(frame.payload)
            plain = self._open(state, frame, generation, counter, now)
            if plain is not None:
                released.append(plain)
            elif generation > state.newest:
                state.pending.append((arrived, generation, frame))
                state.pending_bytes += len(frame.raw)
        state.refresh_deadline()
        return released

    def _expire(self, state: _Sender, now: float) -> None:
        while state.pending and now >= state.pending[0][0] + PENDING_MAX_AGE_S:
            self._drop_oldest(state)
        for generation, deadline in list(state.retire_at.items()):
            if now >= deadline:
                state.erase(generation)
        state.refresh_deadline()
