"""One sender's state in a :class:`~darktower.e2ee.Keyring` (docs/protocol.md §16.4): its keys
by generation (shared, or derived by ratchet), the ratchet ahead of its newest key, the
candidates of generations a share skipped, the replay windows, and its waiting frames."""

from __future__ import annotations

import collections
import math
from typing import Final

from darktower.e2ee._frame import GenerationKeys, ratchet_secret
from darktower.e2ee._primitives import MAX_GENERATION_STEP
from darktower.frames import Frame

# Frames of a generation not yet known wait for its key share at most this long, this many and
# this many bytes per sender (the oldest dropped first, counted no_key).
PENDING_MAX_AGE_S: Final = 2.0
PENDING_MAX_FRAMES: Final = 64
PENDING_MAX_BYTES: Final = 4 * 1024 * 1024
# Older generations stay usable this long after a newer one first decrypts a frame (frames in
# flight across a rotation), and at most this many besides the newest. Policy: the oldest is
# erased first; its frames are then dropped and counted stale_key.
OLD_KEY_GRACE_S: Final = 5.0
MAX_OLD_GENERATIONS: Final = 4
# Counters remembered per sender and generation: a counter seen, or older than the newest by
# this many or more, is a replay (dropped, counted replayed).
REPLAY_WINDOW: Final = 1024
# Ratcheted keys of generations ahead of the newest kept for their next frames (each costs two
# HKDF calls to make again; the ratchet's secrets themselves are kept, 32 bytes each).
MAX_CANDIDATES: Final = 8


class ReplayWindow:
    """The counters seen of one (sender, generation): the newest and the REPLAY_WINDOW before."""

    __slots__ = ("seen", "top")

    def __init__(self) -> None:
        self.top = -1
        self.seen = bytearray(REPLAY_WINDOW)

    def replayed(self, counter: int) -> bool:
        if counter > self.top:
            return False
        return self.top - counter >= REPLAY_WINDOW or bool(self.seen[counter % REPLAY_WINDOW])

    def mark(self, counter: int) -> None:
        if counter > self.top:
            if counter - self.top >= REPLAY_WINDOW:
                self.seen[:] = bytes(REPLAY_WINDOW)
            else:
                for skipped in range(self.top + 1, counter):
                    self.seen[skipped % REPLAY_WINDOW] = 0
            self.top = counter
        self.seen[counter % REPLAY_WINDOW] = 1


class Sender:
    """One sender's keys, the ratchet ahead of them, and the frames waiting for a key."""

    __slots__ = (
        "candidates",
        "chain",
        "deadline",
        "derived",
        "gaps",
        "keys",
        "newest",
        "pending",
        "pending_bytes",
        "retire_at",
        "shared",
        "used",
        "windows",
    )

    def __init__(self) -> None:
        self.keys: dict[int, GenerationKeys] = {}
        self.derived: set[int] = set()  # held generations derived by ratchet, not shared
        self.windows: dict[int, ReplayWindow] = {}
        self.newest = -1  # the newest generation held, -1 for none
        self.shared = -1  # the newest generation a share gave, -1 for none
        self.used = -1  # the newest generation a frame decrypted with
        self.retire_at: dict[int, float] = {}  # older generation -> when it is erased
        # The secrets of newest+1, newest+2, ... by ratchet, made as far as a frame asked
        # (at most MAX_GENERATION_STEP), and the keys of a few of them.
        self.chain: list[bytes] = []
        self.candidates: dict[int, GenerationKeys] = {}
        # Generations a share skipped (older than the newest, never held): their keys by
        # ratchet from the newest before the share, not verified yet.
        self.gaps: dict[int, GenerationKeys] = {}
        self.pending: collections.deque[tuple[float, int, int, Frame]] = collections.deque()
        self.pending_bytes = 0
        self.deadline = math.inf

    def waits(self, generation: int) -> bool:
        """Whether a frame of ``generation`` that did not decrypt waits for a share: it is newer
        than every shared key and held by none, or only by a ratchet (which a share overrides)."""
        if generation <= self.shared:
            return False
        return generation not in self.keys or generation in self.derived

    def refresh_deadline(self) -> None:
        first = self.pending[0][0] + PENDING_MAX_AGE_S if self.pending else math.inf
        self.deadline = min(first, *self.retire_at.values()) if self.retire_at else first

    def ratcheted(self, generation: int) -> bytes:
        """The secret of ``generation`` (newest < it <= newest + MAX_GENERATION_STEP) by
        ratchet from the newest; each step of the chain is derived once."""
        chain = self.chain
        while len(chain) < generation - self.newest:
            chain.append(ratchet_secret(chain[-1] if chain else self.keys[self.newest].secret))
        return chain[generation - self.newest - 1]

    def candidate(self, generation: int) -> GenerationKeys:
        """The keys ``generation`` (newer than the newest, within the step) would have if the
        sender ratcheted to it."""
        keys = self.candidates.get(generation)
        if keys is None:
            keys = GenerationKeys(self.ratcheted(generation), generation)
            if len(self.candidates) >= MAX_CANDIDATES:
                del self.candidates[next(iter(self.candidates))]
            self.candidates[generation] = keys
        return keys

    def adopt(self, generation: int) -> None:
        """A ratchet to ``generation`` verified: it and the few generations before it are held
        (derived)."""
        old = self.newest
        for step in range(max(old + 1, generation - MAX_OLD_GENERATIONS), generation + 1):
            keys = self.candidates.pop(step, None)
            self.keys[step] = keys or GenerationKeys(self.ratcheted(step), step)
            self.derived.add(step)
            self.windows[step] = ReplayWindow()
        self.chain = self.chain[generation - old :]
        self.candidates = {g: k for g, k in self.candidates.items() if g > generation}
        self.newest = generation
        self.trim()

    def adopt_gap(self, generation: int) -> None:
        """A skipped generation's candidate verified: it is held (derived)."""
        self.keys[generation] = self.gaps.pop(generation)
        self.derived.add(generation)
        self.windows[generation] = ReplayWindow()

    def conflicts(self, generation: int, secret: bytes) -> bool:
        """Whether a share of ``generation`` contradicts a key derived by ratchet: another
        secret for it, or one whose ratchet does not give the next derived generation above."""
        held = self.keys.get(generation)
        if held is not None:
            return held.secret != secret
        above = [g for g in self.derived if g > generation]
        if not above:
            return False
        target = min(above)
        if target - generation > MAX_GENERATION_STEP:
            return True
        for _ in range(target - generation):
            secret = ratchet_secret(secret)
        return secret != self.keys[target].secret

    def discard_derived(self, generation: int) -> None:
        """Erase the keys derived by ratchet from ``generation`` on (a share contradicted them)."""
        for g in [g for g in self.derived if g >= generation]:
            self.erase(g)
        for g in [g for g in self.gaps if g >= generation]:
            self.erase(g)
        self.newest = max(self.keys, default=-1)
        # The frames of the erased generations no longer count as used: an older key's window
        # starts when a real newer generation decrypts.
        self.used = min(self.used, self.newest)
        for g in [g for g in self.retire_at if g >= self.used]:
            del self.retire_at[g]
        self.refresh_deadline()
        self.chain = []
        self.candidates.clear()

    def hold(self, keys: GenerationKeys) -> None:
        """A key from a share, newer than every shared one."""
        generation = keys.generation
        previous = self.newest
        if generation > previous:
            if previous >= 0 and generation - previous <= MAX_GENERATION_STEP:
                # Generations skipped (a join then a leave): their frames in flight may still
                # come, so the ratchet from the previous newest stays as candidates.
                low = max(previous + 1, generation - MAX_OLD_GENERATIONS)
                for step in range(low, generation):
                    self.gaps[step] = GenerationKeys(self.ratcheted(step), step)
            self.newest = generation
            self.chain = []
            self.candidates.clear()
        self.keys[generation] = keys
        self.windows[generation] = ReplayWindow()
        self.derived.discard(generation)
        self.shared = generation
        self.trim()

    def trim(self) -> None:
        older = sorted(g for g in (*self.keys, *self.gaps) if g < self.newest)
        for generation in older[: max(0, len(older) - MAX_OLD_GENERATIONS)]:
            self.erase(generation)

    def erase(self, generation: int) -> None:
        self.keys.pop(generation, None)
        self.gaps.pop(generation, None)
        self.derived.discard(generation)
        self.windows.pop(generation, None)
        self.retire_at.pop(generation, None)

    def mark_used(self, generation: int, now: float) -> None:
        if generation <= self.used:
            return
        self.used = generation
        deadline = now + OLD_KEY_GRACE_S
        for older in (*self.keys, *self.gaps):
            if older < generation and older not in self.retire_at:
                self.retire_at[older] = deadline
        self.refresh_deadline()
