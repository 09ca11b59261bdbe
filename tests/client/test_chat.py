"""Chat at the client, on fakes (docs/protocol.md §18.3): sending, the events, the history a
join or a resume brings merged without repeats, the bounded log."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from darktower.client import CHAT_LOG, ChatLog, ChatMessage
from darktower.errors import RateLimited
from darktower.protocol.pb.v1 import signaling_pb2 as sig

from ._product_fakes import pending, product_session, server


def chat(n: int, *, at: int | None = None, to: str = "", text: str = "") -> sig.ChatMessage:
    return sig.ChatMessage(
        message_id=f"m{n}",
        from_participant_id="ann",
        from_name="Ann",
        to_participant_id=to,
        text=text or f"hello {n}",
        sent_at=n * 1000 if at is None else at,
    )


async def test_send_chat_to_everyone_and_to_one(autojump_clock: trio.testing.MockClock) -> None:
    async with product_session() as (session, signaling, _):
        await session.send_chat("hi all")
        await session.send_chat("hi ann", to="ann")
        assert [r.send_chat for r in signaling.sent("send_chat")] == [
            sig.SendChat(text="hi all"),
            sig.SendChat(text="hi ann", to_participant_id="ann"),
        ]
        for bad in ("", "x" * 2001):
            with pytest.raises(ValueError):
                await session.send_chat(bad)
        signaling.refuse["send_chat"] = RateLimited("slow down", retry_after_s=0.4)
        with pytest.raises(RateLimited) as limited:
            await session.send_chat("again")
        assert limited.value.retry_after_s == 0.4


async def test_messages_and_history_become_events_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with product_session() as (session, signaling, _):
        signaling.push(server(chat_history=sig.ChatHistory(messages=[chat(1), chat(2)])))
        signaling.push(server(chat=chat(3, to="me")))
        await trio.testing.wait_all_tasks_blocked()
        events = pending(session)
        assert [e.message_id for e in events if isinstance(e, ChatMessage)] == ["m1", "m2", "m3"]
        third = events[2]
        assert isinstance(third, ChatMessage)
        assert (third.from_participant_id, third.from_name, third.text) == ("ann", "Ann", "hello 3")
        assert third.private and third.to_participant_id == "me" and third.sent_at_us == 3000
        # A resume's history repeats what the session has, and brings what it missed: the log
        # keeps the MC's order; only the missed message is an event.
        history = [chat(1), chat(2), chat(25, at=2500), chat(3, to="me")]
        signaling.push(server(chat_history=sig.ChatHistory(messages=history)))
        signaling.push(server(chat=chat(3, to="me")))
        await trio.testing.wait_all_tasks_blocked()
        assert [e.message_id for e in pending(session) if isinstance(e, ChatMessage)] == ["m25"]
        assert [m.message_id for m in session.chat] == ["m1", "m2", "m25", "m3"]
        assert session.chat[-1].text == "hello 3" and len(session.chat) == 4


def test_the_log_is_bounded_and_drops_the_oldest() -> None:
    log = ChatLog()
    messages = [ChatMessage.from_pb(chat(n)) for n in range(CHAT_LOG + 5)]
    assert log.add(messages[:CHAT_LOG]) == messages[:CHAT_LOG]
    assert log.add(messages[CHAT_LOG:]) == messages[CHAT_LOG:]
    assert len(log) == CHAT_LOG and log.dropped == 5
    assert log[0] == messages[5] and list(log)[-1] == messages[-1]
    # A dropped message seen again is not taken again (nor one older than a full log keeps).
    assert log.add(messages[:3]) == []
    older = ChatMessage.from_pb(chat(99_999, at=0))
    assert log.add([older]) == [] and log[0] == messages[5] and log.dropped == 6


def test_a_hostile_mcs_oversized_message_is_cut_to_the_bounds() -> None:
    big = chat(1, text="y" * 100_000)
    big.from_name = "n" * 10_000
    message = ChatMessage.from_pb(big)
    assert len(message.text) == 2000 and len(message.from_name) == 256
