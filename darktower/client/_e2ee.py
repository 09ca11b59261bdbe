"""End-to-end encryption of a meeting session (docs/protocol.md §16).

Every session offers an X25519 public key in its JoinRequest: a fresh :class:`KeyPairs`
draw per join (a rejoin is a join), the same key for a resume. In a meeting created with
``enable_e2e_encryption`` (its JoinResponse carries ``encryption_keys``) the session's
:class:`Encryption`:

- encrypts every frame the session publishes, on every simulcast layer, under the session's
  own sender key (:meth:`Encryption.encrypt`, the media publishers' hook): the 46-byte header
  stays in clear and is authenticated, the payload is ciphertext;
- gives that key to the other participants, each in an ``E2EEKeyShare`` sealed to its public
  key: to everyone after the join (the JoinResponse's and its ParticipantsBatch's participants,
  and again as a new participant after a rejoin); ratcheted forward and shared with the joiner
  only when somebody joins (the others derive it); rotated to a fresh key shared with everyone
  left when somebody leaves or is kicked (the departed never gets it); shared again with a
  participant whose connection came back (ParticipantUpdated to CONNECTED). Shares go out
  ``SHARES_IN_FLIGHT`` requests at a time from a bounded queue that keeps one share per
  recipient, the newest, and none for a recipient that left (:class:`ShareSender`);
- opens the shares it receives into its :class:`~darktower.e2ee.Keyring` and decrypts every
  received frame with the key of the stream's publisher before any subscription sees it.
  A frame that does not decrypt is dropped and counted by reason in :attr:`Encryption.drops`
  (never an exception, never garbled output); frames that waited for a rotated key are
  delivered once its share arrives; the keyring's bounds are enforced at its deadlines.

Each participant's public key is the first one the session saw for its id (pinned, for the
session's life): a different one named later by the MC (a ParticipantJoined of a known id, a
resume's or a rejoin's participant list) is never sealed to, and never opens a share; it is
counted (``drops["key_changed"]``) and said by an :class:`E2EEKeyChanged` event.

Once a session has been in an encrypted meeting it stays encrypted for life: a later
JoinResponse (a resume, or a rejoin after the MC failed) without ``encryption_keys`` ends the
session with :class:`EncryptionRequired` as its message; it never publishes in clear. A session
joined with ``require_e2ee`` refuses a meeting without encryption from the first JoinResponse.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Awaitable, Callable, Mapping
from typing import Final, Protocol

import attrs
import trio

from darktower.e2ee import (
    BAD_SHARE,
    E2EEError,
    KeyPair,
    Keyring,
    SenderKey,
    fingerprint,
    key_id,
    open_share,
    parse_key_id,
    seal_share,
)
from darktower.errors import InvalidRequest
from darktower.frames import Frame, FrameHeader
from darktower.model import LeaveReason
from darktower.protocol.pb.v1 import signaling_pb2 as sig

from ._events import (
    ConnectionState,
    E2EEKeyChanged,
    ParticipantInfo,
    ParticipantJoined,
    ParticipantLeft,
    ParticipantUpdated,
    SessionEvent,
    wire_keys,
)
from ._media import Encryptor
from ._roster import Roster
from ._seams import SignalingLink
from ._shares import SHARE_QUEUE, SHARES_IN_FLIGHT, ShareSender

# Drop reason of a frame whose stream no participant of the session publishes (as far as
# the session knows): there is no key to pick.
UNKNOWN_SENDER: Final = "unknown_sender"
# Count of public keys refused: another key named for a participant id after its first.
KEY_CHANGED: Final = "key_changed"
# Limit: participant ids whose first public key is kept. Policy when full: the pin of the
# longest-known participant no longer in the room is forgotten.
PINS: Final = 16384

Request = Callable[[sig.ClientMessage], Awaitable[sig.ServerMessage]]


class Owner(Protocol):
    """What the session's encryption tells its session."""

    def finish(self, reason: LeaveReason, message: str = "") -> None: ...

    def put_event(self, event: SessionEvent) -> None: ...


class EncryptionRequired(Exception):
    """A JoinResponse without ``encryption_keys`` where end-to-end encryption is required: the
    join was made with ``require_e2ee``, or the session was already in an encrypted meeting
    (the MC may not turn encryption off: a resume or a rejoin that does ends the session)."""


@attrs.define(eq=False)
class KeyPairs:
    """The X25519 key pair a session's joins offer: :meth:`fresh` makes the one of a new join
    (a rejoin too), :attr:`current` is the one a resume offers again. One per session."""

    _current: KeyPair | None = None

    @property
    def current(self) -> KeyPair:
        if self._current is None:
            self._current = KeyPair.generate()
        return self._current

    def fresh(self) -> KeyPair:
        self._current = KeyPair.generate()
        return self._current


class Encryption:
    """A session's end-to-end encryption (see the module docstring); ``session.e2ee``.

    Attributes: ``enabled`` (the meeting is end-to-end encrypted), ``fingerprint`` (this
    session's safety number, "" without encryption; each participant's is
    ``ParticipantInfo.fingerprint``), ``generation`` (of this session's ``sender_key``),
    ``keyring`` (the keys received: ``keyring.generations(participant_id)``), ``drops`` (frames
    that did not decrypt, by reason: auth_failed, no_key, stale_key, malformed, bad_share
    (key shares), unknown_sender, key_changed (public keys refused)), ``shares_sent``,
    ``shares_failed`` (refused by the MC, e.g. the recipient had left, or not sealable),
    ``shares_dropped`` (never sent: superseded, recipient gone, a rejoin, ``SHARE_QUEUE``).
    """

    def __init__(
        self,
        roster: Roster,
        deliver: Callable[[Frame], None],
        request: Request,
        owner: Owner,
    ) -> None:
        self._participants = roster.participants
        self._deliver = deliver
        self._request = request
        self._owner = owner
        self._pins: dict[str, bytes] = {}  # participant id → the first public key seen
        self._refused: dict[str, bytes] = {}  # participant id → the last other key reported
        self._key_changed = 0
        self.enabled = False  # once True, never turned off (the module docstring)
        self.own_id = ""
        self._key_pair: KeyPair | None = None
        self.sender_key = SenderKey.new()
        self.keyring = Keyring()
        self._earlier: collections.Counter[str] = collections.Counter()  # before a rejoin
        self._unknown = 0
        self._senders: dict[bytes, str] = {}  # wire stream id → its publisher's id
        self._senders_stale = True
        self._generations: dict[str, int] = {}  # sender → generation of its last frame
        self._shares = ShareSender(request, lambda pid: pid in self._participants)
        self._wake = trio.Event()  # the keyring's next deadline may be sooner
        self._unsealed = 0  # shares not made: no public key, or one without a shared secret

    @property
    def fingerprint(self) -> str:
        return self._key_pair.fingerprint if self.enabled and self._key_pair else ""

    @property
    def shares_sent(self) -> int:
        return self._shares.sent

    @property
    def shares_failed(self) -> int:
        return self._shares.failed + self._unsealed

    @property
    def shares_dropped(self) -> int:
        return self._shares.dropped

    @property
    def generation(self) -> int:
        return self.sender_key.generation

    @property
    def drops(self) -> collections.Counter[str]:
        total = self._earlier + self.keyring.drops
        if self._unknown:
            total[UNKNOWN_SENDER] += self._unknown
        if self._key_changed:
            total[KEY_CHANGED] += self._key_changed
        return total

    def public_key(self, pid: str, named: bytes) -> bytes:
        """The public key of participant ``pid`` that the session uses: the first one seen for
        the id (pinned now if ``named`` is the first). ``named`` (the key the MC names now)
        if different is refused: counted and reported once (:class:`E2EEKeyChanged`)."""
        pinned = self._pins.get(pid)
        if pinned is None:
            if named:
                if len(self._pins) >= PINS:
                    self._unpin()
                self._pins[pid] = named
            return named
        if named and named != pinned and self._refused.get(pid) != named:
            self._refused[pid] = named
            self._key_changed += 1
            self._owner.put_event(E2EEKeyChanged(pid, fingerprint(pinned), fingerprint(named)))
        return pinned

    def _unpin(self) -> None:
        gone = next((pid for pid in self._pins if pid not in self._participants), None)
        if gone is None:  # everyone pinned is in the room: the oldest goes
            gone = next(iter(self._pins))
        del self._pins[gone]
        self._refused.pop(gone, None)

    @property
    def encryptor(self) -> Encryptor | None:
        """What the session's media publishers encrypt with (None: no encryption)."""
        return self.encrypt if self.enabled else None

    def check(self, join: sig.JoinResponse) -> None:
        """Raises :class:`EncryptionRequired` when ``join`` (the first, a resume's or a
        rejoin's) does not make an encrypted meeting and the session must stay encrypted."""
        if self.enabled and not join.HasField("encryption_keys"):
            raise EncryptionRequired(
                "end-to-end encryption required, but the MC's JoinResponse has no "
                "encryption_keys: the session ends rather than send media in clear"
            )

    def kept(self, join: sig.JoinResponse) -> bool:
        """False, the session ended, when ``join`` (a resume's or a rejoin's) turns encryption
        off (see :meth:`check`): never publish in clear. The public keys it names are checked
        against the first ones seen (:meth:`public_key`)."""
        try:
            self.check(join)
        except EncryptionRequired as exc:
            self._owner.finish(LeaveReason.CONNECTION_LOST, str(exc))
            return False
        for p in join.existing_participants:
            if p.participant_id != self.own_id and p.participant_id in self._pins:
                self.public_key(p.participant_id, p.public_key)
        return True

    def joined(self, signaling: SignalingLink, *, required: bool = False) -> None:
        """The session joined (again, after a rejoin: a new participant) on ``signaling``: a
        new sender key at generation 0 and a new keyring, the key shared with everyone in
        the room (the roster is the join's). Raises ValueError in an encrypted meeting when
        the MC did not take the key pair ``signaling`` offered (another key, or none), and
        :class:`EncryptionRequired` (see :meth:`check`; ``required``: encryption is required
        from now on), changing nothing else."""
        join = signaling.join_response
        self.enabled |= required
        self.check(join)
        self.enabled = join.HasField("encryption_keys")
        key_pair = signaling.key_pair if self.enabled else None
        if self.enabled and (
            key_pair is None or join.encryption_keys.public_key != key_pair.public
        ):
            raise ValueError("the meeting is end-to-end encrypted: join with the session's key")
        self.own_id = join.participant_id
        self._key_pair = key_pair
        self.sender_key = SenderKey.new()
        self._earlier += self.keyring.drops
        self.keyring = Keyring()
        self._generations.clear()
        self._shares.clear()
        self._senders_stale = True
        self._share_with(self._participants)

    # -- the room ----------------------------------------------------------------------------
    def on_event(self, event: SessionEvent) -> None:
        """A change of the room (the session's own events): keys follow it."""
        if isinstance(event, ParticipantJoined | ParticipantLeft):
            self._senders_stale = True
        elif not isinstance(event, ParticipantUpdated):
            self._senders_stale = True  # StreamPublished, StreamUnpublished
            return
        if not self.enabled:
            return
        pid = event.participant.participant_id
        if isinstance(event, ParticipantJoined):
            if self._step(self.sender_key.ratchet):
                self._share_with({pid: event.participant})
        elif isinstance(event, ParticipantLeft):
            self.keyring.forget(pid)
            self._shares.forget(pid)
            self._generations.pop(pid, None)
            if self._step(self.sender_key.rotate):
                self._share_with(self._participants)
        elif event.participant.connection is ConnectionState.CONNECTED:
            self._share_with({pid: event.participant})

    def _step(self, move: Callable[[], None]) -> bool:
        try:
            move()
        except E2EEError as exc:  # the last generation: nothing more can be sent safely
            self._owner.finish(LeaveReason.CONNECTION_LOST, f"end-to-end encryption: {exc}")
            return False
        return True

    def _share_with(self, participants: Mapping[str, ParticipantInfo]) -> None:
        """Queue a share of the current sender key for each of ``participants``."""
        if not self.enabled or self._key_pair is None:
            return
        own, own_id = self._key_pair, self.own_id
        generation, secret = self.sender_key.generation, self.sender_key.secret
        for pid, info in participants.items():
            public = self.public_key(pid, info.public_key)
            try:
                ciphertext = seal_share(own, own_id, public, pid, generation, secret)
            except E2EEError:  # no key, or one that makes no shared secret
                self._unsealed += 1
                continue
            share = sig.E2EEKeyShare(
                from_participant_id=own_id,
                to_participant_id=pid,
                key_id=key_id(generation),
                ciphertext=ciphertext,
            )
            self._shares.put(pid, sig.ClientMessage(key_share=share))

    def on_share(self, message: sig.ServerMessage) -> None:
        """An ``E2EEKeyShare`` for this session: its secret goes into the keyring, and the
        frames that waited for it to their subscriptions. One that does not open (or of a
        sender the session does not know) is ignored and counted ``bad_share``."""
        share = message.key_share
        sender = share.from_participant_id
        peer = self._participants.get(sender)
        if not self.enabled or self._key_pair is None or peer is None:
            self.keyring.drops[BAD_SHARE] += 1
            return
        try:
            generation = parse_key_id(share.key_id)
            public = self.public_key(sender, peer.public_key)
            secret = open_share(
                self._key_pair, self.own_id, public, sender, generation, share.ciphertext
            )
        except E2EEError:
            self.keyring.drops[BAD_SHARE] += 1
            return
        self._wake.set()
        for frame in self.keyring.add(sender, generation, secret, trio.current_time()):
            self._deliver(frame)

    # -- frames ------------------------------------------------------------------------------
    def encrypt(self, header: FrameHeader, payload: bytes | bytearray | memoryview) -> bytes:
        """The wire frame of ``payload`` encrypted under the current sender key (the media
        publishers' hook). Raises ValueError for a payload over ``MAX_PLAINTEXT``."""
        return self.sender_key.encrypt(header, payload)

    def open(self, frame: Frame) -> Frame | None:
        """The decrypted frame, or None: it waits for its key (delivered later) or is dropped
        and counted. Never raises."""
        sender = self._sender_of(frame.stream_id_bytes)
        if sender is None:
            self._unknown += 1
            return None
        plain = self.keyring.decrypt(sender, frame, trio.current_time())
        if plain is None:
            self._wake.set()  # waiting: a deadline, perhaps the next one
        else:
            # A sender's new generation starts the grace of its older ones (a deadline).
            generation = int.from_bytes(frame.payload[1:5], "big")
            if self._generations.get(sender) != generation:
                self._generations[sender] = generation
                self._wake.set()
        return plain

    def _sender_of(self, key: bytes) -> str | None:
        """The publisher of the stream whose wire id is ``key``. The map is rebuilt from the
        roster whenever the room changed: a stream id published again by another participant
        (after a leave and a rejoin) maps to its new publisher, never to the old one."""
        if self._senders_stale:
            self._senders_stale = False
            self._senders = {
                wire: p.participant_id
                for p in self._participants.values()
                for s in p.streams
                for wire in _wire_keys(s.stream_id, s.layer_ids)
            }
        return self._senders.get(key)

    # -- the task ----------------------------------------------------------------------------
    async def run(self) -> None:
        """Send the queued shares and enforce the keyring's bounds at its deadlines, until
        cancelled (the session's run owns it) or the session is over."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._expire)
            await self._shares.run()  # returns once the session is over
            nursery.cancel_scope.cancel()

    async def _expire(self) -> None:
        while True:
            deadline = self.keyring.next_deadline()
            with trio.move_on_at(math.inf if deadline is None else deadline):
                await self._wake.wait()
            self._wake = trio.Event()
            self.keyring.expire(trio.current_time())


def _wire_keys(stream_id: str, layer_ids: tuple[str, ...]) -> list[bytes]:
    try:
        return wire_keys(stream_id, layer_ids)
    except InvalidRequest:  # not a UUID: no frame carries it
        return []


__all__ = [
    "KEY_CHANGED",
    "PINS",
    "SHARES_IN_FLIGHT",
    "SHARE_QUEUE",
    "UNKNOWN_SENDER",
    "Encryption",
    "EncryptionRequired",
    "KeyPairs",
]
