"""A session's chat (docs/protocol.md §18.3): the messages it sends and those it received.

:class:`Chat` sends ``SendChat`` and handles the MC's ``ChatMessage`` and ``ChatHistory`` (the
meeting's messages so far, after a join or a resume). Every message the session had not seen
becomes a :class:`ChatMessage` event and goes into :class:`ChatLog` (``MeetingSession.chat``):
de-duplicated by ``message_id`` (a resume's history repeats what the session has), kept in the
order the MC stamped them (``sent_at_us``), bounded. Chat is relayed by the MC as text: in an
end-to-end encrypted meeting (docs/protocol.md §16) it is not end-to-end encrypted.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from itertools import pairwise
from typing import Final, overload

from darktower.protocol._bounds import MAX_CHAT_TEXT_CHARS
from darktower.protocol.pb.v1 import signaling_pb2 as sig

from ._events import SessionEvent
from ._meeting_models import ChatMessage

# Limit: the messages a session keeps (the MC keeps as many for late joiners, docs/protocol.md
# §18.3). Policy when full: the oldest message is dropped and counted in ``ChatLog.dropped``.
CHAT_LOG: Final = 200
# Limit: the message ids remembered to drop a message seen before (a resume's history), also
# after it left the log. Policy when full: the oldest id is forgotten.
CHAT_SEEN_IDS: Final = 4 * CHAT_LOG

Request = Callable[[sig.ClientMessage], Awaitable[sig.ServerMessage]]


class ChatLog(Sequence[ChatMessage]):
    """The chat messages a session received, oldest first (a read-only sequence): those to
    everyone and its own private ones, at most ``size`` (the oldest dropped, counted in
    ``dropped``)."""

    def __init__(self, size: int = CHAT_LOG) -> None:
        self.size = max(1, size)
        self._messages: list[ChatMessage] = []
        self._seen: OrderedDict[str, None] = OrderedDict()
        self.dropped = 0

    @overload
    def __getitem__(self, index: int) -> ChatMessage: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[ChatMessage]: ...

    def __getitem__(self, index: int | slice) -> ChatMessage | Sequence[ChatMessage]:
        return self._messages[index]

    def __len__(self) -> int:
        return len(self._messages)

    def __iter__(self) -> Iterator[ChatMessage]:
        return iter(list(self._messages))

    def __repr__(self) -> str:
        return f"ChatLog({len(self._messages)} messages, {self.dropped} dropped)"

    def add(self, messages: Iterable[ChatMessage]) -> list[ChatMessage]:
        """Keep the messages not seen before; returns those (in the order given) that are
        kept. One older than every kept message of a full log is not kept."""
        new = []
        for message in messages:
            if message.message_id in self._seen:
                continue
            self._seen[message.message_id] = None
            if len(self._seen) > CHAT_SEEN_IDS:
                self._seen.popitem(last=False)
            new.append(message)
        if not new:
            return []
        in_order = not self._messages or new[0].sent_at_us >= self._messages[-1].sent_at_us
        self._messages.extend(new)
        if not in_order or any(a.sent_at_us > b.sent_at_us for a, b in pairwise(new)):
            self._messages.sort(key=lambda m: m.sent_at_us)  # stable: equal stamps keep order
        excess = len(self._messages) - self.size
        if excess > 0:
            gone = {id(m) for m in self._messages[:excess]}
            del self._messages[:excess]
            self.dropped += excess
            new = [m for m in new if id(m) not in gone]
        return new


class Chat:
    """The chat of one session: :meth:`send`, and the server's messages through
    :meth:`handlers` (``put`` hands the application the events)."""

    def __init__(self, put: Callable[[SessionEvent], None], size: int = CHAT_LOG) -> None:
        self._put = put
        self.log = ChatLog(size)

    def handlers(self) -> dict[str, Callable[[sig.ServerMessage], None]]:
        return {
            "chat": lambda m: self._received([m.chat]),
            # The newest the log can keep (a hostile MC's longer history costs no more).
            "chat_history": lambda m: self._received(m.chat_history.messages[-self.log.size :]),
        }

    def _received(self, messages: Iterable[sig.ChatMessage]) -> None:
        for message in self.log.add(ChatMessage.from_pb(m) for m in messages):
            self._put(message)

    @staticmethod
    async def send(request: Request, text: str, to: str | None) -> None:
        """Send ``text`` to everyone or to participant ``to``, once acknowledged. Raises
        ValueError for an empty text or one over MAX_CHAT_TEXT_CHARS, what ``request`` raises
        (RateLimited with ``retry_after_s``, NotFound for an unknown recipient)."""
        if not text or len(text) > MAX_CHAT_TEXT_CHARS:
            raise ValueError(f"a chat message has 1 to {MAX_CHAT_TEXT_CHARS} characters")
        chat = sig.SendChat(text=text, to_participant_id=to or "")
        await request(sig.ClientMessage(send_chat=chat))


__all__ = ["CHAT_LOG", "CHAT_SEEN_IDS", "Chat", "ChatLog"]
