"""Chat over the real stack (docs/protocol.md §18.3): messages both ways, a private one seen by
its two ends only, the history a late joiner gets, the MC's rate limit as RateLimited."""

from __future__ import annotations

import pathlib

import pytest

from darktower.client import ChatMessage, MeetingSession
from darktower.errors import RateLimited

from ._stack import meeting, next_event


async def said(session: MeetingSession, text: str) -> ChatMessage:
    return await next_event(session, ChatMessage, lambda e: e.text == text)


async def test_chat_both_ways_private_and_the_history_of_a_late_joiner(
    tmp_path: pathlib.Path,
) -> None:
    async with meeting(tmp_path) as m:
        host = await m.join("host", host=True)
        ann = await m.join("ann")
        bob = await m.join("bob")
        await host.send_chat("welcome")
        for session in (host, ann, bob):  # the sender gets its own message back
            got = await said(session, "welcome")
            assert (got.from_participant_id, got.from_name) == (host.participant_id, "host")
            assert not got.private and got.message_id and got.sent_at_us > 0
        await ann.send_chat("thanks")
        assert (await said(host, "thanks")).from_name == "ann"
        await ann.send_chat("just between us", to=host.participant_id)
        for session in (ann, host):
            private = await said(session, "just between us")
            assert private.private and private.to_participant_id == host.participant_id
        await bob.send_chat("bob here")
        await said(ann, "bob here")
        await said(bob, "bob here")
        # Bob never got the private one (his next message came after it, in order).
        assert [c.text for c in bob.chat] == ["welcome", "thanks", "bob here"]
        assert [c.text for c in ann.chat] == ["welcome", "thanks", "just between us", "bob here"]

        # A late joiner gets the history it may see, as events and in its log.
        carol = await m.join("carol")
        seen = [await next_event(carol, ChatMessage) for _ in range(3)]
        assert [c.text for c in seen] == ["welcome", "thanks", "bob here"]
        assert list(carol.chat) == seen
        assert [c.message_id for c in carol.chat] == [c.message_id for c in bob.chat]


async def test_the_mcs_rate_limit_says_when_to_try_again(tmp_path: pathlib.Path) -> None:
    async with meeting(tmp_path) as m:
        host = await m.join("host", host=True)
        with pytest.raises(RateLimited) as limited:
            for n in range(30):  # 10 at once, then 5 a second
                await host.send_chat(f"spam {n}")
        assert 0 < limited.value.retry_after_s <= 1
