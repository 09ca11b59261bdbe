"""examples/chat.py, run in-process (its ``main`` with the arguments its header documents)
against the real stack: it says what it was told to, answers ``!ping`` and ``!who`` (privately
to a private one) and leaves after ``--messages N`` messages of others; it sends what is typed
and leaves at the input's end."""

from __future__ import annotations

import io
import pathlib
import sys

import pytest
import trio

from darktower.client import ChatMessage, ParticipantLeft
from darktower.model import LeaveReason

from ._stack import WAIT_S, meeting, next_event
from .test_examples import argv, load


async def test_the_chat_bot_says_answers_and_leaves(tmp_path: pathlib.Path) -> None:
    chat_example = load("chat")
    async with meeting(tmp_path) as m:
        host = await m.join("host", host=True)
        await host.set_publication(audio_muted=True)
        async with trio.open_nursery() as nursery:
            args = argv(m, "--say", "hello from the bot", "--messages", "3", "--no-input")
            bot = await nursery.start(chat_example.main, args)
            hello = await next_event(host, ChatMessage, lambda e: e.text == "hello from the bot")
            assert hello.from_participant_id == bot.participant_id
            await host.send_chat("!ping")
            pong = await next_event(host, ChatMessage, lambda e: e.text == "pong")
            assert not pong.private
            await host.send_chat("!who", to=bot.participant_id)
            roll = await next_event(host, ChatMessage, lambda e: e.text.startswith("me:"))
            assert roll.private and "host (host): muted, camera on" in roll.text
            await host.send_chat("bye")
            with trio.fail_after(WAIT_S):
                left = await next_event(host, ParticipantLeft)
        assert left.participant.participant_id == bot.participant_id
        assert left.reason is LeaveReason.VOLUNTARY


async def test_the_chat_bot_sends_what_is_typed_and_leaves_at_its_end(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    chat_example = load("chat")
    monkeypatch.setattr(sys, "stdin", io.StringIO("typed line\n@host for you\n@nobody x\n"))
    async with meeting(tmp_path) as m:
        host = await m.join("host", host=True)
        async with trio.open_nursery() as nursery:
            bot = await nursery.start(chat_example.main, argv(m, "--name", "typist"))
            typed = await next_event(host, ChatMessage, lambda e: e.text == "typed line")
            assert typed.from_name == "typist" and not typed.private
            private = await next_event(host, ChatMessage, lambda e: e.text == "for you")
            assert private.private and private.to_participant_id == host.participant_id
            with trio.fail_after(WAIT_S):
                left = await next_event(host, ParticipantLeft)  # the input's end
        assert left.participant.participant_id == bot.participant_id
        assert left.reason is LeaveReason.VOLUNTARY
