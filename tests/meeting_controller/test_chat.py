"""Chat (docs/protocol.md §18.3): relayed to everyone or privately, checked, rate-limited, and
kept in a bounded history that a member gets right after its join or its resume; over real
QUIC, and the history's bounds on the object itself."""

from __future__ import annotations

import pathlib
from typing import Any

import pytest
import trio

from darktower.client import SignalingClient
from darktower.errors import DarkTowerError, InvalidRequest, NotFound, RateLimited
from darktower.loadtest import open_udp_proxy
from darktower.meeting_controller._chat import ChatHistory
from darktower.meeting_controller._limits import (
    CHAT_BURST,
    CHAT_CATCH_UP_BYTES,
    CHAT_HISTORY_BYTES,
    CHAT_HISTORY_MESSAGES,
    CHAT_PER_S,
    ROOM_CHAT_BURST,
    ROOM_CHAT_PER_S,
)
from darktower.protocol import MAX_MESSAGE_SIZE
from darktower.protocol.pb.v1 import signaling_pb2 as sig

from ._harness import join_via, next_event, open_stack, resumed


def _chat(text: str, to: str = "") -> sig.ClientMessage:
    return sig.ClientMessage(send_chat=sig.SendChat(text=text, to_participant_id=to))


async def _said(client: SignalingClient) -> sig.ChatMessage:
    return (await next_event(client, "chat")).chat


async def _first_event(client: SignalingClient) -> sig.ServerMessage:
    with trio.fail_after(10):
        return await client.events.receive()


async def test_messages_to_everyone_and_to_one(tmp_path: pathlib.Path) -> None:
    async with open_stack(tmp_path) as stack:
        await stack.assign("m")
        async with (
            stack.join("m", name="Ada") as ada,
            stack.join("m", name="Bob") as bob,
            stack.join("m", name="Cy") as cy,
        ):
            reply = await ada.request(_chat("hello all"))
            assert reply.WhichOneof("message") == "ack"
            seen = [await _said(client) for client in (ada, bob, cy)]
            assert seen[0] == seen[1] == seen[2]
            message = seen[0]
            assert (message.from_participant_id, message.from_name) == (ada.participant_id, "Ada")
            assert (message.to_participant_id, message.text) == ("", "hello all")
            assert len(message.message_id) == 36 and message.sent_at > 0
            # private: the sender and the recipient only (Cy's next message is a later one)
            await ada.request(_chat("psst", to=bob.participant_id))
            for client in (ada, bob):
                private = await _said(client)
                assert (private.text, private.to_participant_id) == ("psst", bob.participant_id)
            await bob.request(_chat("back to all"))
            assert (await _said(cy)).text == "back to all"
            # refused: no text, too long, nobody there
            for refused, error in (
                (_chat(""), InvalidRequest),
                (_chat("x" * 2001), InvalidRequest),
                (_chat("hi", to="nobody"), NotFound),
            ):
                with pytest.raises(error):
                    await cy.request(refused)
            await cy.request(_chat("x" * 2000))  # the longest allowed

            # a late joiner gets what it may see, right after its JoinResponse
            async with stack.join("m", name="Dee") as dee:
                first = await _first_event(dee)
                assert first.WhichOneof("message") == "chat_history"
                texts = [m.text for m in first.chat_history.messages]
                assert texts == ["hello all", "back to all", "x" * 2000]
            # nor others' private messages
            async with stack.join("m", token=stack.token("m")) as late:
                first = await _first_event(late)
                assert "psst" not in [m.text for m in first.chat_history.messages]


async def test_chat_is_rate_limited_per_participant(tmp_path: pathlib.Path) -> None:
    async with open_stack(tmp_path) as stack:
        await stack.assign("m")
        async with stack.join("m") as talker, stack.join("m") as other:
            outcomes: list[DarkTowerError | None] = []
            started = trio.current_time()

            async def send(i: int) -> None:
                try:
                    await talker.request(_chat(f"spam {i}"))
                except RateLimited as exc:
                    outcomes.append(exc)
                else:
                    outcomes.append(None)

            async with trio.open_nursery() as nursery:
                for i in range(CHAT_BURST + 5):
                    nursery.start_soon(send, i)
            elapsed = trio.current_time() - started
            accepted = outcomes.count(None)
            assert CHAT_BURST <= accepted <= CHAT_BURST + int(elapsed * CHAT_PER_S) + 1
            refusals = [e for e in outcomes if e is not None]
            assert refusals and all(float(e.details["retry_after_s"]) > 0 for e in refusals)
            # another participant's budget is its own
            await other.request(_chat("not me"))


async def test_chat_is_rate_limited_per_meeting(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The meeting's senders together are bounded too (each message takes a slot in every
    member's outbox): here a meeting budget of 12 (hardly refilled), two senders of 10."""
    from darktower.meeting_controller import _room

    assert (ROOM_CHAT_PER_S, ROOM_CHAT_BURST) == (20.0, 40)
    monkeypatch.setattr(_room, "ROOM_CHAT_PER_S", 0.001)
    monkeypatch.setattr(_room, "ROOM_CHAT_BURST", 12)
    async with open_stack(tmp_path) as stack:
        await stack.assign("m")
        async with stack.join("m") as ada, stack.join("m") as bob:
            outcomes: list[RateLimited | None] = []

            async def send(client: SignalingClient, i: int) -> None:
                try:
                    await client.request(_chat(f"hello {i}"))
                except RateLimited as exc:
                    outcomes.append(exc)
                else:
                    outcomes.append(None)

            async with trio.open_nursery() as nursery:
                for i in range(CHAT_BURST):  # each within its own budget
                    nursery.start_soon(send, ada, i)
                    nursery.start_soon(send, bob, i)
            assert outcomes.count(None) == 12
            refusals = [e for e in outcomes if e is not None]
            assert len(refusals) == 2 * CHAT_BURST - 12
            assert all(float(e.details["retry_after_s"]) > 0 for e in refusals)
            assert len(stack.running.controller.rooms["m"].chat) == 12


async def test_a_member_with_a_half_full_outbox_misses_chat_and_stays(
    tmp_path: pathlib.Path,
) -> None:
    """Chat is not queued for a member whose outbox is half full (a slow reader: it gets the
    history at its resume); other messages still are, and it is not dropped."""
    async with open_stack(tmp_path) as stack:
        await stack.assign("m")
        async with stack.join("m") as ada, stack.join("m") as bob:
            member = stack.running.controller.rooms["m"].members[bob.participant_id]
            # Bob's outbox, 8 long, read by nobody (its writer keeps the real one).
            real = member.outbox
            slow, queued = trio.open_memory_channel[Any](8)
            member.outbox = slow
            try:
                for i in range(CHAT_BURST - 1):  # Ada's own budget keeps one
                    await ada.request(_chat(f"hello {i}"))
                assert [m.chat.text for m in _queued(queued)] == [f"hello {i}" for i in range(4)]
                assert not member.overflowed
                assert bob.participant_id in stack.running.controller.rooms["m"].members
                assert stack.running.controller.rooms["m"].chat_skipped == CHAT_BURST - 1 - 4
            finally:
                member.outbox = real
            # what Bob's real outbox carries is unaffected
            await ada.request(_chat("and now"))
            assert (await _said(bob)).text == "and now"


def _queued(channel: Any) -> list[sig.ServerMessage]:
    out = []
    while True:
        try:
            out.append(channel.receive_nowait())
        except trio.WouldBlock:
            return out


async def test_a_resume_gets_the_history_with_what_it_missed(tmp_path: pathlib.Path) -> None:
    idle_s = 1.0
    async with open_stack(tmp_path, idle_timeout_s=idle_s, resume_grace_s=5.0) as stack:
        await stack.assign("m")
        async with (
            stack.join("m") as witness,
            open_udp_proxy(stack.running.signal_address) as proxy,
            join_via(stack, proxy, "m", idle_s) as subject,
        ):
            pid = subject.participant_id
            await witness.request(_chat("before"))
            await _said(subject)
            proxy.pause()
            updated = await next_event(witness, "participant_updated")
            assert updated.participant_updated.connection == sig.RECONNECTING
            # to it while it is away: kept for it, not queued
            await witness.request(_chat("while away", to=pid))
            async with resumed(stack, subject, proxy, "m") as back:
                first = await _first_event(back)
                assert [m.text for m in first.chat_history.messages] == ["before", "while away"]


def _message(i: int, text: str, sender: str = "a", to: str = "") -> sig.ChatMessage:
    return sig.ChatMessage(
        message_id=f"id-{i}",
        from_participant_id=sender,
        from_name="x" * 256,
        to_participant_id=to,
        text=text,
        sent_at=i,
    )


def test_the_history_keeps_the_newest_within_its_bounds() -> None:
    history = ChatHistory()
    for i in range(CHAT_HISTORY_MESSAGES + 50):
        history.add(_message(i, f"m{i}"))
    assert len(history) == CHAT_HISTORY_MESSAGES
    kept = history.visible_to("b")
    assert [m.message_id for m in kept] == [
        f"id-{i}" for i in range(50, CHAT_HISTORY_MESSAGES + 50)
    ]
    # text: 256 KiB at most (2,000 four-byte characters: 8,000 bytes each)
    big = ChatHistory()
    for i in range(60):
        big.add(_message(i, "😀" * 2000))
    assert big.text_bytes <= CHAT_HISTORY_BYTES
    assert len(big) == CHAT_HISTORY_BYTES // 8000
    # a catch-up: the newest that fit 48 KiB of text and one message, oldest first
    catch_up = big.visible_to("b")
    assert len(catch_up) == CHAT_CATCH_UP_BYTES // 8000
    assert catch_up[-1].message_id == "id-59" and catch_up[0].message_id == "id-54"
    [message] = big.catch_up("b")
    assert message.ByteSize() < MAX_MESSAGE_SIZE
    # many short messages with long names fit one message too
    names = ChatHistory()
    for i in range(CHAT_HISTORY_MESSAGES):
        names.add(_message(i, "y" * 200))
    [message] = names.catch_up("b")
    assert message.ByteSize() <= MAX_MESSAGE_SIZE
    assert 0 < len(message.chat_history.messages) < CHAT_HISTORY_MESSAGES
    assert message.chat_history.messages[-1].message_id == f"id-{CHAT_HISTORY_MESSAGES - 1}"
    # private messages: only to their sender and recipient
    private = ChatHistory()
    private.add(_message(1, "to c", sender="a", to="c"))
    private.add(_message(2, "all"))
    assert [m.text for m in private.visible_to("a")] == ["to c", "all"]
    assert [m.text for m in private.visible_to("c")] == ["to c", "all"]
    assert [m.text for m in private.visible_to("b")] == ["all"]
    assert ChatHistory().catch_up("b") == ()
