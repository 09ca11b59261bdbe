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
from darktower.e2ee._sender import (
    MAX_OLD_GENERATIONS,
    OLD_KEY_GRACE_S,
    PENDING_MAX_AGE_S,
    PENDING_MAX_BYTES,
    PENDING_MAX_FRAMES,
    REPLAY_WINDOW,
    Sender,
)
from darktower.frames import HEADER_SIZE, Frame, FrameError

__all__ = [
    "AUTH_FAILED",
    "BAD_SHARE",
    "DROP_REASONS",
    "KEYRING_PENDING_MAX_BYTES",
    "KEYRING_PENDING_MAX_FRAMES",
    "MALFORMED",
    "MAX_OLD_GENERATIONS",
    "NO_KEY",
    "OLD_KEY_GRACE_S",
    "PENDING_MAX_AGE_S",
    "PENDING_MAX_BYTES",
    "PENDING_MAX_FRAMES",
    "REPLAYED",
    "REPLAY_WINDOW",
    "STALE_KEY",
    "Keyring",
]

# Drop reasons, the keys of Keyring.drops.
AUTH_FAILED: Final = "auth_failed"  # a known key, a tag that does not verify
NO_KEY: Final = "no_key"  # waited for its key and did not get it in time or room
STALE_KEY: Final = "stale_key"  # a generation older than the newest, no longer (or never) held
MALFORMED: Final = "malformed"  # shorter than the overhead, or an unknown format version
BAD_SHARE: Final = "bad_share"  # a share that did not open, or names an old generation
REPLAYED: Final = "replayed"  # a (generation, counter) already decrypted, or too old to tell
DROP_REASONS: Final = (AUTH_FAILED, NO_KEY, STALE_KEY, MALFORMED, BAD_SHARE, REPLAYED)

# Limits across all senders of a keyring, besides each sender's (_sender.py). Policy when full:
# the oldest waiting frame of any sender is dropped and counted NO_KEY.
KEYRING_PENDING_MAX_FRAMES: Final = 512
KEYRING_PENDING_MAX_BYTES: Final = 16 * 1024 * 1024

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


class Keyring:
    """Every sender's frame keys on one client, for one meeting.

    :meth:`add` takes a sender secret from a key share (already opened) and releases the
    frames that waited for it; :meth:`decrypt` turns an encrypted frame into its plaintext
    frame, or holds it for a key, or drops it and counts the reason in :attr:`drops`. A sender
    is whatever string names the stream's publisher (its participant id).
    """

    def __init__(self) -> None:
        self._senders: dict[str, Sender] = {}
        self._arrivals = 0  # orders waiting frames across senders
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
        older than the newest shared, another secret for a shared generation, or a secret of
        the wrong size is ignored and counted ``bad_share``. A share overrides the keys a
        ratchet derived: one that contradicts them erases them (counted ``auth_failed``: a
        frame forged under a ratchet of an old key verified them).
        """
        if len(secret) != SECRET_SIZE or not 0 <= generation <= MAX_GENERATION:
            self.drops[BAD_SHARE] += 1
            return []
        secret = bytes(secret)
        state = self._state(sender, now)
        held = state.keys.get(generation)
        if held is not None and held.secret == secret:
            if generation in state.derived and generation > state.shared:
                state.derived.discard(generation)  # confirmed
                state.shared = generation
            return []
        if generation <= state.shared or (held is not None and generation not in state.derived):
            self.drops[BAD_SHARE] += 1
            return []
        if state.conflicts(generation, secret):
            state.discard_derived(generation)
            self.drops[AUTH_FAILED] += 1
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
        if plain is None and state.waits(generation):
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

    def _state(self, sender: str, now: float) -> Sender:
        state = self._senders.get(sender)
        if state is None:
            state = self._senders[sender] = Sender()
        elif now >= state.deadline:
            self._expire(state, now)
        return state

    def _open(
        self, state: Sender, frame: Frame, generation: int, counter: int, now: float
    ) -> Frame | None:
        """Decrypt with a held key, a skipped generation's candidate or a ratchet of the
        newest; None when it is not decrypted: dropped and counted, unless it waits for a share
        (``state.waits``: then the caller holds it)."""
        keys = state.keys.get(generation)
        if keys is not None:
            # A derived key's window may hold a forged frame's counter: a frame under another
            # key (a share to come) waits whatever its counter, so its tag is checked first.
            window = state.windows[generation]
            derived = state.waits(generation)
            if not derived and window.replayed(counter):
                self.drops[REPLAYED] += 1
                return None
            plaintext = keys.open(frame.raw, counter)
            if plaintext is None:
                if not derived:
                    self.drops[AUTH_FAILED] += 1
                return None
            if derived and window.replayed(counter):
                self.drops[REPLAYED] += 1
                return None
        elif generation in state.gaps:
            keys = state.gaps[generation]
            plaintext = keys.open(frame.raw, counter)
            if plaintext is None:
                self.drops[STALE_KEY] += 1
                return None
            state.adopt_gap(generation)
        elif 0 <= state.newest < generation <= state.newest + MAX_GENERATION_STEP:
            plaintext = state.candidate(generation).open(frame.raw, counter)
            if plaintext is None:
                return None  # a fresh key not shared yet, or a forged frame: it waits
            state.adopt(generation)
        else:
            if not state.waits(generation):
                self.drops[STALE_KEY] += 1
            return None
        state.windows[generation].mark(counter)
        state.mark_used(generation, now)
        return _plain_frame(frame, plaintext)

    def _hold(self, state: Sender, generation: int, frame: Frame, now: float) -> None:
        # A copy: the frame's view may pin a whole received chunk for the time it waits.
        try:
            kept = Frame.from_wire(bytes(frame.raw))
        except FrameError:  # only a hand-built Frame with an unreadable header gets here
            self.drops[MALFORMED] += 1
            return
        size = len(kept.raw)
        self._arrivals += 1
        state.pending.append((now, self._arrivals, generation, kept))
        state.pending_bytes += size
        while len(state.pending) > PENDING_MAX_FRAMES or state.pending_bytes > PENDING_MAX_BYTES:
            self._drop_oldest(state)
        senders = self._senders.values()
        while (
            sum(len(s.pending) for s in senders) > KEYRING_PENDING_MAX_FRAMES
            or sum(s.pending_bytes for s in senders) > KEYRING_PENDING_MAX_BYTES
        ):
            self._drop_oldest(min((s for s in senders if s.pending), key=lambda s: s.pending[0][1]))
        for other in senders:
            other.refresh_deadline()

    def _drop_oldest(self, state: Sender) -> None:
        old = state.pending.popleft()[3]
        state.pending_bytes -= len(old.raw)
        self.drops[NO_KEY] += 1

    def _release(self, sender: str, state: Sender, now: float) -> list[Frame]:
        """Try every waiting frame again, in order, after a new key: decrypted ones are
        released, those that still wait for a share wait on, the rest are dropped."""
        waiting = state.pending
        state.pending = collections.deque()
        state.pending_bytes = 0
        released: list[Frame] = []
        for entry in waiting:
            _, _, generation, frame = entry
            _, _, counter = PREFIX.unpack_from(frame.payload)
            plain = self._open(state, frame, generation, counter, now)
            if plain is not None:
                released.append(plain)
            elif state.waits(generation):
                state.pending.append(entry)
                state.pending_bytes += len(frame.raw)
        state.refresh_deadline()
        return released

    def _expire(self, state: Sender, now: float) -> None:
        while state.pending and now >= state.pending[0][0] + PENDING_MAX_AGE_S:
            self._drop_oldest(state)
        for generation, deadline in list(state.retire_at.items()):
            if now >= deadline:
                state.erase(generation)
        state.refresh_deadline()
