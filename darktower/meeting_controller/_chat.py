"""Chat (docs/protocol.md §18.3): text messages to everyone or to one participant, relayed by
the MC, bounded in size (the signaling bounds: 2,000 characters) and rate (per participant,
``CHAT_PER_S``, ``CHAT_BURST``, and per meeting, ``ROOM_CHAT_PER_S``, ``ROOM_CHAT_BURST``: each
message takes a slot in every member's outbox; a member whose outbox is half full misses it
rather than being dropped), and kept for the meeting's life on this MC in a bounded
:class:`ChatHistory`, from which a member that joins or resumes gets a ``ChatHistory`` right
after its JoinResponse and participant batches.

Chat goes through the MC as text: it is not end-to-end encrypted (docs/protocol.md §16).
"""

from __future__ import annotations

import collections
import time
import uuid
from typing import TYPE_CHECKING

import trio

from darktower.errors import InvalidRequest, NotFound, RateLimited
from darktower.model import ParticipantId
from darktower.protocol import MAX_MESSAGE_SIZE
from darktower.protocol.pb.v1 import signaling_pb2 as sig

from ._limits import (
    CHAT_CATCH_UP_BYTES,
    CHAT_HISTORY_BYTES,
    CHAT_HISTORY_MESSAGES,
    CHAT_OUTBOX_SHARE,
)

if TYPE_CHECKING:
    from ._room import RoomMember, RoomState
    from ._session import SignalingSession

# Room left in the ChatHistory message for its envelope (request id, protocol version).
_ENVELOPE_SLACK = 32


def _text_bytes(message: sig.ChatMessage) -> int:
    return len(message.text.encode())


class ChatHistory:
    """A meeting's last ``CHAT_HISTORY_MESSAGES`` messages, at most ``CHAT_HISTORY_BYTES`` of
    text (UTF-8); adding beyond drops the oldest."""

    __slots__ = ("_bytes", "_messages")

    def __init__(self) -> None:
        self._messages: collections.deque[sig.ChatMessage] = collections.deque()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._messages)

    @property
    def text_bytes(self) -> int:
        return self._bytes

    def add(self, message: sig.ChatMessage) -> None:
        self._messages.append(message)
        self._bytes += _text_bytes(message)
        while len(self._messages) > CHAT_HISTORY_MESSAGES or self._bytes > CHAT_HISTORY_BYTES:
            self._bytes -= _text_bytes(self._messages.popleft())

    def visible_to(self, participant_id: str) -> list[sig.ChatMessage]:
        """What ``participant_id`` may see (to everyone, or private to or from it): the newest
        that fit ``CHAT_CATCH_UP_BYTES`` of text and one signaling message, oldest first."""
        chosen: list[sig.ChatMessage] = []
        text = 0
        size = _ENVELOPE_SLACK
        for message in reversed(self._messages):
            to = message.to_participant_id
            if to and participant_id not in (to, message.from_participant_id):
                continue
            entry = message.ByteSize()
            entry += 1 + (entry.bit_length() + 6) // 7  # its tag and length
            text += _text_bytes(message)
            size += entry
            if text > CHAT_CATCH_UP_BYTES or size > MAX_MESSAGE_SIZE:
                break
            chosen.append(message)
        chosen.reverse()
        return chosen

    def catch_up(self, participant_id: str) -> tuple[sig.ServerMessage, ...]:
        """The ``ChatHistory`` message for a member that joins or resumes (none when there is
        nothing it may see)."""
        messages = self.visible_to(participant_id)
        if not messages:
            return ()
        return (sig.ServerMessage(chat_history=sig.ChatHistory(messages=messages)),)


async def send_chat(session: SignalingSession, m: sig.ClientMessage) -> sig.ServerMessage:
    """``SendChat``: relayed as a ``ChatMessage`` to every member, the sender included, or to
    the sender and the recipient only, and kept in the meeting's history; answered ``Ack``."""
    await trio.lowlevel.checkpoint()
    room, member = session.room, session.member
    request = m.send_chat
    if not request.text:
        raise InvalidRequest("a chat message needs text", details={"field": "send_chat.text"})
    recipient = None
    if request.to_participant_id:
        recipient = room.members.get(ParticipantId(request.to_participant_id))
        if recipient is None:
            raise NotFound(f"participant {request.to_participant_id} is not in this meeting")
    now = trio.current_time()
    if not member.chat_bucket.try_acquire(now):
        raise RateLimited(
            "too many chat messages", retry_after_s=member.chat_bucket.retry_after(now)
        )
    # The sender's budget first: one sender over its own never spends the meeting's.
    if not room.chat_bucket.try_acquire(now):
        raise RateLimited(
            "too many chat messages in this meeting",
            retry_after_s=room.chat_bucket.retry_after(now),
        )
    message = sig.ChatMessage(
        message_id=str(uuid.uuid4()),
        from_participant_id=member.id,
        from_name=member.name,
        to_participant_id=request.to_participant_id,
        text=request.text,
        sent_at=int(time.time() * 1_000_000),
    )
    room.chat.add(message)
    relayed = sig.ServerMessage(chat=message)
    if recipient is None:
        for other in list(room.members.values()):
            _relay(room, other, relayed)
    else:
        _relay(room, member, relayed)
        if recipient is not member:
            _relay(room, recipient, relayed)
    return sig.ServerMessage(ack=sig.Ack())


def _relay(room: RoomState, member: RoomMember, message: sig.ServerMessage) -> None:
    """Queue a chat message for ``member``, unless its outbox is ``CHAT_OUTBOX_SHARE`` full
    or more: a slow reader then misses it (it gets it with the history at its resume) rather
    than being dropped for a full outbox, and its outbox keeps room for what it must get."""
    queued = member.outbox.statistics()
    if queued.current_buffer_used >= queued.max_buffer_size * CHAT_OUTBOX_SHARE:
        room.chat_skipped += 1
        return
    room.deliver(member, message)


__all__ = ["ChatHistory", "send_chat"]
