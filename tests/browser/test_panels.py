"""The meeting page's side panels on their own, in Chromium: the chat (darktower/web/chat.js,
docs/protocol.md §18.3); the participant list (darktower/web/people.js) is tested in
test_panels_people.py with the same page and fixture.

A minimal page imports the two components (and nothing else of the client but the
SignalingError the session rejects with) and mounts them with recording fakes for send(),
moderate() and kick(). One Chromium page serves every case of a module: each case mounts
fresh components, so the module's wall time is one browser start.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

import pytest

from .._browser import CHROMIUM, CHROMIUM_ARGS, browser_unavailable
from ._static import serve_web

if TYPE_CHECKING:
    from playwright.sync_api import Page

pytestmark = pytest.mark.browser

T = TypeVar("T")
WAIT = {"timeout": 5_000, "polling": 20}

PAGE = """<!doctype html>
<meta charset=utf-8>
<meta name=viewport content="width=device-width, initial-scale=1">
<title>panels</title>
<link rel=stylesheet href=/static/style.css>
<link rel=stylesheet href=/static/panels.css>
<style>
  #t-side { display: grid; grid-template-rows: 24rem auto; width: 22rem; max-width: 100%; }
  @media (max-width: 600px) { #t-side { width: 100%; } }
</style>
<div id=t-side><div id=t-chat></div><div id=t-people></div></div>
<script type=module>
import { ChatPanel } from "/static/chat.js";
import { PeoplePanel } from "/static/people.js";
import { ModerationAction } from "/static/schema.js";
import { SignalingError } from "/static/signaling.js";

const h = {
  ModerationAction, SignalingError, chat: null, people: null,
  sent: [], unreadCalls: [], moderated: [], kicked: [], list: [], host: true,
  sendImpl: null, moderateImpl: null, kickImpl: null,
  mountChat(selfId = "me", list = []) {
    this.chat?.destroy();
    this.sent = []; this.unreadCalls = []; this.list = list;
    this.sendImpl = async () => {};
    this.chat = new ChatPanel(document.getElementById("t-chat"), {
      selfId,
      send: (text, to) => { this.sent.push([text, to]); return this.sendImpl(text, to); },
      people: () => this.list,
      onUnread: (n) => this.unreadCalls.push(n),
    });
  },
  mountPeople(selfId = "me", host = true) {
    this.people?.destroy();
    this.moderated = []; this.kicked = []; this.host = host;
    this.moderateImpl = async () => {}; this.kickImpl = async () => {};
    this.people = new PeoplePanel(document.getElementById("t-people"), {
      selfId,
      isHost: () => this.host,
      moderate: (pid, actions) => { this.moderated.push([pid, actions]); return this.moderateImpl(pid, actions); },
      kick: (pid) => { this.kicked.push(pid); return this.kickImpl(pid); },
    });
  },
  texts() { return [...document.querySelectorAll("#t-chat .chat-body")].map((n) => n.textContent); },
  metas() { return [...document.querySelectorAll("#t-chat .chat-meta")].map((n) => n.textContent); },
  names() { return [...document.querySelectorAll("#t-people .person-name")].map((n) => n.textContent); },
  focused() { const a = document.activeElement; return a ? (a.dataset.key ?? a.className) : null; },
};
window.h = h;
</script>
"""


def _message(
    i: int, sender: str = "bob", name: str = "Bob", to: str = "", **kw: Any
) -> dict[str, Any]:
    return {
        "messageId": f"m{i}",
        "fromParticipantId": sender,
        "fromName": name,
        "toParticipantId": to,
        "text": f"message {i}",
        "sentAt": 1_764_720_000_000_000 + i * 1_000_000,
        **kw,
    }


class _Browser:
    """One Chromium page, driven from one worker thread (Playwright's sync objects belong to
    the thread that made them)."""

    def __init__(self) -> None:
        self.executor = concurrent.futures.ThreadPoolExecutor(1)
        self.playwright: Any = None
        self.browser: Any = None
        self.page: Page | None = None

    def _start(self, url: str) -> None:
        if not os.path.exists(CHROMIUM):
            browser_unavailable(f"{CHROMIUM} not found")
        try:
            from playwright.sync_api import sync_playwright
        except ImportError as exc:
            browser_unavailable(f"playwright not installed: {exc}")
        # As tests/_browser.py: Playwright's loop in this thread needs the plain asyncio policy.
        asyncio.set_event_loop_policy(asyncio.DefaultEventLoopPolicy())
        self.playwright = sync_playwright().start()
        try:
            self.browser = self.playwright.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS, timeout=30_000
            )
        except Exception as exc:
            browser_unavailable(f"cannot launch {CHROMIUM}: {exc}")
        page = self.browser.new_page(viewport={"width": 1280, "height": 720})
        page.set_default_timeout(10_000)
        page.goto(url)
        page.wait_for_function("() => window.h !== undefined", **WAIT)
        self.page = page

    def _stop(self) -> None:
        if self.browser is not None:
            self.browser.close()
        if self.playwright is not None:
            self.playwright.stop()

    def run(self, case: Callable[[Page], T]) -> T:
        def call() -> T:
            assert self.page is not None
            return case(self.page)

        return self.executor.submit(call).result()


@pytest.fixture(scope="module")
def browser() -> Iterator[_Browser]:
    with serve_web({"/panels": PAGE}) as base:
        b = _Browser()
        try:
            b.executor.submit(b._start, base + "/panels").result()
            yield b
        finally:
            b.executor.submit(b._stop).result()
            b.executor.shutdown()


# Chat.


def test_chat_shows_messages_in_order_once_with_their_marks(browser: _Browser) -> None:
    people = [
        {"participantId": "me", "name": "Me"},
        {"participantId": "bob", "name": "Bob"},
        {"participantId": "cy", "name": "Cy"},
    ]

    def case(page: Page) -> dict[str, Any]:
        page.evaluate("(list) => h.mountChat('me', list)", people)
        page.evaluate(
            "(ms) => { h.chat.add(ms[0]); h.chat.history(ms); }",
            [
                _message(1),
                _message(2, to="me"),
                _message(3, sender="me", name="Me", to="cy"),
                _message(4, sender="me", name="Me"),
            ],
        )
        # A resumed session's history repeats messages; a BigInt sentAt as the codec gives it.
        page.evaluate(
            "(ms) => h.chat.history(ms.map((m) => ({...m, sentAt: BigInt(m.sentAt)})))",
            [_message(2, to="me"), _message(5, sender="cy", name="Cy")],
        )
        return page.evaluate(
            """() => ({texts: h.texts(), metas: h.metas(), unread: h.chat.unread,
                       calls: h.unreadCalls.slice(),
                       times: [...document.querySelectorAll('#t-chat time')].map((t) => t.dateTime),
                       log: [document.querySelector('#t-chat .chat-log').getAttribute('role'),
                             document.querySelector('#t-chat .chat-log').getAttribute('aria-live')]})"""
        )

    got = browser.run(case)
    assert got["texts"] == [f"message {i}" for i in (1, 2, 3, 4, 5)]
    metas = got["metas"]
    assert metas[0].startswith("Bob") and "private" not in metas[0]
    assert metas[1].startswith("Bob") and "to you" in metas[1]
    assert metas[2].startswith("You") and "to Cy" in metas[2]
    assert metas[3].startswith("You") and "private" not in metas[3]
    assert metas[4].startswith("Cy")
    assert got["times"][0] == "2025-12-03T00:00:01.000Z"
    assert got["times"][4] == "2025-12-03T00:00:05.000Z"
    assert got["log"] == ["log", "polite"]
    # Messages of others count as unread; own messages do not.
    assert got["unread"] == 3
    assert got["calls"] == [1, 2, 3]

    def read(page: Page) -> Any:
        page.evaluate("() => h.chat.markRead()")
        page.evaluate("(m) => h.chat.add(m)", _message(6))
        # A participant who joined since the picker was last opened is named all the same.
        page.evaluate("() => h.list.push({participantId: 'dee', name: 'Dee'})")
        page.evaluate("(m) => h.chat.add(m)", _message(7, sender="me", name="Me", to="dee"))
        return page.evaluate("() => [h.chat.unread, h.unreadCalls.slice(-2), h.metas().at(-1)]")

    unread, calls, meta = browser.run(read)
    assert [unread, calls] == [1, [0, 1]]
    assert meta.startswith("You") and "to Dee" in meta


def test_chat_inserts_text_never_html(browser: _Browser) -> None:
    evil = '<img src=x onerror="window.pwned=1"><b>bold</b>'

    def case(page: Page) -> Any:
        page.evaluate("() => { window.pwned = 0; h.mountChat('me', []); }")
        page.evaluate(
            "([m, evil]) => h.chat.add({...m, text: evil, fromName: evil})", [_message(1), evil]
        )
        return page.evaluate(
            """() => ({imgs: document.querySelectorAll('#t-chat img, #t-chat b').length,
                       text: h.texts()[0], from: document.querySelector('#t-chat .chat-from').textContent,
                       pwned: window.pwned})"""
        )

    got = browser.run(case)
    assert got == {"imgs": 0, "text": evil, "from": evil, "pwned": 0}


def test_chat_enter_sends_shift_enter_breaks_the_line(browser: _Browser) -> None:
    def case(page: Page) -> dict[str, Any]:
        page.evaluate("() => h.mountChat('me', [{participantId: 'me', name: 'Me'}])")
        box = page.locator("#t-chat textarea")
        assert box.get_attribute("maxlength") == "2000"
        box.click()
        page.keyboard.type("hello")
        page.keyboard.press("Shift+Enter")
        page.keyboard.type("world")
        page.keyboard.press("Enter")
        page.wait_for_function("() => h.sent.length === 1 && h.chat.box.value === ''", **WAIT)
        # The picker takes the people of the moment it is opened, never the own entry.
        page.evaluate(
            "() => { h.list = [{participantId: 'me', name: 'Me'}, {participantId: 'bob', name: 'Bob'}]; }"
        )
        picker = page.locator("#t-chat select")
        picker.focus()
        options = picker.locator("option").all_text_contents()
        picker.select_option(label="Bob")
        box.fill("just for you")
        page.get_by_role("button", name="Send").click()
        page.wait_for_function("() => h.sent.length === 2", **WAIT)
        # Bob leaves: the private recipient stays chosen, marked as gone.
        page.evaluate("() => { h.list = [{participantId: 'me', name: 'Me'}]; }")
        picker.focus()
        page.locator("#t-chat textarea").focus()
        picker.focus()
        return {
            "sent": page.evaluate("() => h.sent"),
            "options": options,
            "after": picker.locator("option").all_text_contents(),
            "chosen": picker.input_value(),
        }

    got = browser.run(case)
    assert got["sent"] == [["hello\nworld", ""], ["just for you", "bob"]]
    assert got["options"] == ["Everyone", "Bob"]
    assert got["after"] == ["Everyone", "Bob (left)"]
    assert got["chosen"] == "bob"


def test_chat_rejected_send_keeps_the_text_and_says_why(browser: _Browser) -> None:
    def case(page: Page) -> dict[str, Any]:
        page.evaluate(
            """() => { h.mountChat('me', []);
                       h.sendImpl = async () => { throw new h.SignalingError(9, 'rate limited',
                                                          {retry_after_s: '1.2'}); }; }"""
        )
        page.locator("#t-chat textarea").fill("too fast")
        page.locator("#t-chat textarea").press("Enter")
        error = page.get_by_role("alert")
        page.wait_for_function("() => !h.chat.error.hidden", **WAIT)
        first = {
            "error": error.text_content(),
            "box": page.locator("#t-chat textarea").input_value(),
        }
        page.evaluate(
            "() => { h.sendImpl = async () => { throw new h.SignalingError(4, 'gone'); }; }"
        )
        page.get_by_role("button", name="Send").click()
        page.wait_for_function("() => h.sent.length === 2 && !h.chat.sending", **WAIT)
        second = error.text_content()
        page.evaluate("() => { h.sendImpl = async () => {}; }")
        page.get_by_role("button", name="Send").click()
        page.wait_for_function("() => h.chat.error.hidden && h.chat.box.value === ''", **WAIT)
        return {**first, "second": second, "sent": page.evaluate("() => h.sent.length")}

    got = browser.run(case)
    assert got["error"] == "Slow down: try again in 2 s"
    assert got["box"] == "too fast"
    assert "no longer in the meeting" in got["second"]
    assert got["sent"] == 3


def test_chat_keeps_the_last_500_messages(browser: _Browser) -> None:
    def case(page: Page) -> dict[str, Any]:
        page.evaluate("() => h.mountChat('me', [])")
        page.evaluate(
            """() => h.chat.history(Array.from({length: 600}, (_, i) => ({messageId: `m${i}`,
                fromParticipantId: 'bob', fromName: 'Bob', toParticipantId: '', text: `message ${i}`,
                sentAt: 0})))"""
        )
        # An evicted message delivered again is still known.
        page.evaluate(
            "() => h.chat.add({messageId: 'm3', fromParticipantId: 'bob', fromName: 'Bob', text: 'again'})"
        )
        texts = page.evaluate("() => h.texts()")
        return {"count": len(texts), "first": texts[0], "last": texts[-1]}

    assert browser.run(case) == {"count": 500, "first": "message 100", "last": "message 599"}


def test_chat_encryption_notice_self_and_destroy(browser: _Browser) -> None:
    def case(page: Page) -> dict[str, Any]:
        page.evaluate("() => h.mountChat('me', [])")
        notice = page.locator("#t-chat .chat-notice")
        hidden_at_first = notice.is_hidden()
        page.evaluate("() => h.chat.setEncrypted(true)")
        shown = notice.text_content() if notice.is_visible() else None
        page.evaluate("(m) => h.chat.add(m)", _message(1, sender="new", name="Me"))
        before = page.evaluate("() => h.metas()[0]")
        page.evaluate("() => h.chat.setSelf('new')")
        after = page.evaluate("() => h.metas()[0]")
        page.evaluate("() => h.chat.destroy()")
        left = page.evaluate("() => document.getElementById('t-chat').childElementCount")
        return {
            "hidden": hidden_at_first,
            "shown": shown,
            "before": before,
            "after": after,
            "left": left,
        }

    got = browser.run(case)
    assert got["hidden"] is True
    assert got["shown"] is not None and "not end-to-end encrypted" in got["shown"]
    assert got["before"].startswith("Me") and got["after"].startswith("You")
    assert got["left"] == 0


def test_chat_log_follows_new_messages_unless_scrolled_up(browser: _Browser) -> None:
    many = "(from) => h.chat.history(Array.from({length: 40}, (_, i) => ({messageId: `${from}${i}`, fromParticipantId: 'bob', fromName: 'Bob', text: `line ${i}`})))"
    bottom = (
        "() => { const l = h.chat.log; return l.scrollHeight - l.scrollTop - l.clientHeight < 2; }"
    )

    def case(page: Page) -> dict[str, Any]:
        page.evaluate("() => h.mountChat('me', [])")
        # Messages that come while the panel is hidden: shown again, it is at the newest.
        page.evaluate("() => { document.getElementById('t-chat').hidden = true; }")
        page.evaluate(many, "a")
        page.evaluate("() => { document.getElementById('t-chat').hidden = false; }")
        page.wait_for_function(bottom, **WAIT)
        page.evaluate(many, "b")
        at_bottom = page.evaluate(bottom)
        # Scrolled up to read: a new message does not move the view.
        page.locator("#t-chat .chat-log").evaluate("(l) => l.scrollTo(0, 0)")
        page.wait_for_function("() => h.chat.stuck === false", **WAIT)
        page.evaluate(many, "c")
        return {"at_bottom": at_bottom, "top": page.evaluate("() => h.chat.log.scrollTop")}

    assert browser.run(case) == {"at_bottom": True, "top": 0}
