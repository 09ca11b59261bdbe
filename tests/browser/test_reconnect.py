"""The page reconnects by itself (docs/protocol.md §13), in Chromium. Against stand-in servers
(tests/browser/_fakestack.py, with resume and media reconnection added here):

* the MC drops the signaling session: the page shows "Reconnecting…" (status bar and own tile),
  resumes with JoinRequest{meeting_id, resume_token}, keeps its participant id and tiles,
  reconciles the participant list, reconnects media with the new token and decodes again;
* ParticipantUpdated{RECONNECTING} marks another participant's tile, CONNECTED clears it;
* the media session alone is lost: MediaReconnectRequest, a new media session with the
  MediaReconnect's token; an unprompted MediaReconnect moves the media session too.

Against the real stack (tests/_stack.py: GC with its page listener, MC, MH), two pages, one of
them behind netfault proxies (darktower.loadtest.netfault) to the MC and the MH: the page is
told to dial the proxies with the ``darktower.connectVia({"host:port": "host:port"})`` hook
(the URLs the GC and MC hand out are the services' own; the certificate pin does not name the
port). Its connection is cut for 5 s: it shows the reconnecting state, the other page marks its
tile, and then each decodes the other's video again, with the same participant and tiles.
"""

from __future__ import annotations

import pathlib
import time
from typing import TYPE_CHECKING, Any

import pytest
import trio

from darktower.loadtest.netfault import open_udp_proxy
from darktower.protocol._framing import MessageDecoder, encode_message
from darktower.protocol.pb.v1 import signaling_pb2 as sig
from darktower.transport import (
    ConnectRequest,
    RejectSession,
    Route,
    ServerConfig,
    TlsCredentials,
    WebTransportServer,
    WebTransportSession,
    WebTransportStream,
    generate_dev_certificate,
)
from tests._stack import open_services

from .._browser import run_page_script
from ._fakestack import BOT_ID, MEDIA_TOKEN, MEETING_ID, PAGE_ID, FakeStack, _bot
from ._pages import POLL_MS, run_in_browser, snapshot, wait_for_frames, wait_for_hooks
from ._static import serve_web

if TYPE_CHECKING:
    from playwright.sync_api import BrowserContext, Page

pytestmark = pytest.mark.browser

RESUME_TOKENS = ("resume-1", "resume-2")
RESUME_MEDIA_TOKEN = "media-token-resumed"
ASKED_MEDIA_TOKEN = "media-token-asked"
PUSHED_MEDIA_TOKEN = "media-token-pushed"
IGNORED_MEDIA_TOKEN = "media-token-ignored"
# Before the drop the room also holds Dan; while the page is away Dan leaves and Carol joins.
DAN = sig.Participant(participant_id="p-dan", name="Dan")
CAROL = sig.Participant(participant_id="p-carol", name="Carol")
WANT_VIDEO_FRAMES = 10
OTHER_MH_PATH = "/v1/media-other"


@pytest.fixture(scope="module")
def dev_cert() -> TlsCredentials:
    return generate_dev_certificate()


class ResumingFakeStack(FakeStack):
    """The fake MC answers a resume and MediaReconnectRequest; its MH takes the new tokens.

    Commands (``POST /test/<action>``): ``drop`` (the signaling session closes without a reason),
    ``answer-resume`` (the held resume is answered), ``bot-reconnecting`` / ``bot-connected``
    (ParticipantUpdated), ``drop-media`` (the MH closes the media session), ``push-same``
    (an unprompted MediaReconnect naming the MH the page is connected to), ``push-other`` (one
    naming another MH: the same fake at another path).
    """

    def __init__(self, cert: TlsCredentials, trio_token: trio.lowlevel.TrioToken) -> None:
        super().__init__(cert, trio_token)
        self.signaling_sessions = 0
        self.media_tokens: list[str] = []  # the token of each media session, in order
        self.resume_requests: list[sig.ClientMessage] = []
        self.media_requests: list[int] = []  # request ids of MediaReconnectRequest
        self.resume_gate = trio.Event()
        self.media_session: WebTransportSession | None = None

    def routes_table(self) -> dict[str, Route]:
        table = super().routes_table()
        table[OTHER_MH_PATH] = table["/v1/media"]
        return table

    async def mc(self, session: WebTransportSession, context: object) -> None:
        self.signaling_sessions += 1
        stream = await session.accept_stream()
        assert isinstance(stream, WebTransportStream)
        lock = trio.Lock()

        async def send(message: sig.ServerMessage) -> None:
            async with lock:
                await stream.send_all(encode_message(message))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._commands, session, send, nursery.cancel_scope)
            decoder = MessageDecoder(sig.ClientMessage)
            try:
                while data := await stream.receive_some():
                    decoder.receive_data(data)
                    for message in decoder:
                        self.received.append(message)
                        await self._handle(message, send)
            except trio.BrokenResourceError:
                pass
            finally:
                nursery.cancel_scope.cancel()

    async def _commands(
        self, session: WebTransportSession, send: Any, scope: trio.CancelScope
    ) -> None:
        async for action in self._commands_out:
            if action == "drop":
                await session.close(0, "gone")  # no SessionEnded, no reason code
                scope.cancel()  # this session is over: the next one takes the commands
            elif action == "answer-resume":
                self.resume_gate.set()
            elif action in ("bot-reconnecting", "bot-connected"):
                state = sig.RECONNECTING if action == "bot-reconnecting" else sig.CONNECTED
                await send(
                    sig.ServerMessage(
                        participant_updated=sig.ParticipantUpdated(
                            participant_id=BOT_ID, connection=state
                        )
                    )
                )
            elif action == "drop-media":
                assert self.media_session is not None
                await self.media_session.close(0, "gone")
            elif action == "push-same":
                await send(sig.ServerMessage(media_reconnect=self._media(IGNORED_MEDIA_TOKEN)))
            elif action == "push-other":
                other = self.mh_url.replace("/v1/media", OTHER_MH_PATH)
                pushed = self._media(PUSHED_MEDIA_TOKEN, other)
                await send(sig.ServerMessage(media_reconnect=pushed))

    def _media(self, token: str, url: str | None = None) -> sig.MediaReconnect:
        server = sig.MediaServerInfo(media_handler_url=url or self.mh_url, connection_token=token)
        return sig.MediaReconnect(media_server=server)

    async def _handle(self, message: sig.ClientMessage, send: Any) -> None:
        rid = message.request_id
        kind = message.WhichOneof("message")
        if kind == "join" and message.join.resume_token:
            self.resume_requests.append(message)
            assert message.join.resume_token == RESUME_TOKENS[0]
            await self.resume_gate.wait()
            reply = sig.JoinResponse(
                participant_id=PAGE_ID,
                existing_participants=[_bot(), CAROL],
                media_server=self._media(RESUME_MEDIA_TOKEN).media_server,
                resume_token=RESUME_TOKENS[1],
                resumed=True,
            )
            await send(sig.ServerMessage(request_id=rid, join_response=reply))
        elif kind == "join":
            reply = sig.JoinResponse(
                participant_id=PAGE_ID,
                existing_participants=[_bot(), DAN],
                media_server=self._media(MEDIA_TOKEN).media_server,
                resume_token=RESUME_TOKENS[0],
            )
            await send(sig.ServerMessage(request_id=rid, join_response=reply))
        elif kind == "media_reconnect_request":
            self.media_requests.append(rid)
            await send(
                sig.ServerMessage(request_id=rid, media_reconnect=self._media(ASKED_MEDIA_TOKEN))
            )
        else:
            await self._mc_handle(message, send, None)

    async def mh_authorize(self, request: ConnectRequest) -> None:
        token = request.query.get("token", "")
        known = (
            MEDIA_TOKEN,
            RESUME_MEDIA_TOKEN,
            ASKED_MEDIA_TOKEN,
            PUSHED_MEDIA_TOKEN,
            IGNORED_MEDIA_TOKEN,
        )
        if token not in known:
            raise RejectSession(401, "bad connection token")
        self.media_tokens.append(token)

    async def mh(self, session: WebTransportSession, context: object) -> None:
        self.media_session = session
        try:
            await super().mh(session, context)
        except trio.BrokenResourceError:
            pass


# The page's side: helpers, and a log of what the page shows (the status bar, the markers on
# the own tile and on the bot's) at each change, taken by a MutationObserver.
PRELUDE = """
const waitFor = async (pred, what, timeoutMs = 20000) => {
  const t0 = Date.now();
  while (!pred()) {
    if (Date.now() - t0 > timeoutMs) {
      const snap = window.darktower ? JSON.stringify(window.darktower.snapshot()) : "no hooks";
      const notes = [...document.querySelectorAll("#notices li")].map(l => l.textContent);
      throw new Error(`timed out waiting for ${what}: ${snap} ${JSON.stringify(notes)}`);
    }
    await new Promise(r => setTimeout(r, 20));
  }
};
const test = (action) => fetch(`/test/${action}`, {method: "POST"});
await waitFor(() => window.darktower, "the page's hooks");
const d = window.darktower;
const marker = (pid) => {
  const m = document.querySelector(`#grid .tile[data-participant-id="${pid}"] .reconnecting`);
  return m ? !m.hidden : null;
};
const tiles = () => [...document.querySelectorAll("#grid .tile")].map(t => t.dataset.participantId);
const shown = [];
const look = () => {
  const now = {status: document.getElementById("status").textContent,
               self: marker(pageId), bot: marker(botId)};
  const last = shown[shown.length - 1];
  if (!last || JSON.stringify(last) !== JSON.stringify(now)) shown.push(now);
};
new MutationObserver(look).observe(document.body,
  {subtree: true, childList: true, attributes: true, characterData: true});
const frames = () => d.stats.decodedFrames[botId] ?? 0;
const moreFrames = async (what) => {
  const n = frames();
  await waitFor(() => frames() >= n + wantVideo, `${wantVideo} more video frames ${what}`);
};
const notices = () => [...document.querySelectorAll("#notices li")].map(l => l.textContent);
"""


def page_script(body: str) -> str:
    return f"async ({{pageId, botId, wantVideo, meetingId}}) => {{ {PRELUDE} {body} }}"


SIGNALING_LOST = page_script(
    """
  await d.join({meetingId, name: "Alice"});
  await moreFrames("after the join");
  const botTile = document.querySelector(`#grid .tile[data-participant-id="${botId}"]`);
  const before = {tiles: tiles(), participantId: d.participantId};
  await test("drop");
  await waitFor(() => d.state === "reconnecting", "the reconnecting state");
  await waitFor(() => marker(pageId) === true, "the own tile's marker");
  const during = {status: document.getElementById("status").textContent, self: marker(pageId),
                  snapshot: d.snapshot()};
  await test("answer-resume");
  await waitFor(() => d.state === "joined" && !d.reconnecting, "the resumed session");
  await moreFrames("after the resume");
  const after = {tiles: tiles(), snapshot: d.snapshot(),
                 sameBotTile: botTile === document.querySelector(
                   `#grid .tile[data-participant-id="${botId}"]`),
                 status: document.getElementById("status").textContent, self: marker(pageId)};
  await test("bot-reconnecting");
  await waitFor(() => marker(botId) === true, "the bot's marker");
  const botAway = d.snapshot().reconnectingParticipants;
  await test("bot-connected");
  await waitFor(() => marker(botId) === false, "the bot's marker cleared");
  return {before, during, after, botAway, botBack: d.snapshot().reconnectingParticipants,
          shown, notices: notices()};
"""
)

MEDIA_LOST = page_script(
    """
  await d.join({meetingId, name: "Bob"});
  await moreFrames("after the join");
  await test("drop-media");
  await waitFor(() => d.stats.reconnects.media === 1, "the media reconnection");
  await moreFrames("after the media reconnection");
  const asked = {snapshot: d.snapshot(), self: marker(pageId)};
  // Messages arrive in order: the ignored one is handled before the one that moves media.
  await test("push-same");
  await test("push-other");
  await waitFor(() => d.stats.reconnects.media === 2, "the pushed media reconnection");
  await moreFrames("after the pushed media reconnection");
  return {asked, pushed: d.snapshot(), shown, notices: notices()};
"""
)


async def _run(cert: TlsCredentials, script: str) -> tuple[Any, ResumingFakeStack]:
    stack = ResumingFakeStack(cert, trio.lowlevel.current_trio_token())
    arg = {
        "pageId": PAGE_ID,
        "botId": BOT_ID,
        "wantVideo": WANT_VIDEO_FRAMES,
        "meetingId": MEETING_ID,
    }
    with serve_web(api=stack.api) as base:
        async with trio.open_nursery() as nursery:
            config = ServerConfig(
                tls=cert, host="127.0.0.1", port=0, allowed_origins=frozenset({base})
            )
            host, port = await nursery.start(WebTransportServer(config, stack.routes_table()).run)
            stack.mc_url = f"https://{host}:{port}/v1/signal"
            stack.mh_url = f"https://{host}:{port}/v1/media"
            url = f"{base}/m/{MEETING_ID}"
            result = await trio.to_thread.run_sync(run_page_script, url, script, arg)
            nursery.cancel_scope.cancel()
    return result, stack


RECONNECTING = "Reconnecting…"


async def test_a_lost_signaling_session_is_resumed_with_the_same_participant_and_tiles(
    dev_cert: TlsCredentials,
) -> None:
    result, stack = await _run(dev_cert, SIGNALING_LOST)

    # While away: "Reconnecting…" in the status bar and on the own tile.
    assert result["during"]["status"] == RECONNECTING
    assert result["during"]["self"] is True
    assert result["during"]["snapshot"]["state"] == "reconnecting"
    assert result["during"]["snapshot"]["participantId"] == PAGE_ID

    # The resume: a new signaling session whose JoinRequest carries the resume token.
    assert stack.signaling_sessions == 2
    [resume] = stack.resume_requests
    assert resume.join.meeting_id == MEETING_ID
    assert resume.join.resume_token == RESUME_TOKENS[0]
    assert resume.join.join_token == ""

    # Back: same participant, the own and the bot's tiles kept (the bot's is the same
    # element), Dan gone and Carol there as the MC's list says, media on the new token.
    assert result["before"]["participantId"] == PAGE_ID
    assert result["before"]["tiles"] == [PAGE_ID, BOT_ID, DAN.participant_id]
    after = result["after"]
    assert after["snapshot"]["participantId"] == PAGE_ID
    assert after["tiles"] == [PAGE_ID, BOT_ID, CAROL.participant_id]
    assert after["sameBotTile"] is True
    assert after["status"] != RECONNECTING and after["self"] is False
    assert after["snapshot"]["stats"]["reconnects"] == {"signaling": 1, "media": 1}
    assert stack.media_tokens == [MEDIA_TOKEN, RESUME_MEDIA_TOKEN]
    # The bot's streams were kept: subscribed once, not again after the resume.
    subscribes = [m.subscribe.stream_id for m in stack.received if m.HasField("subscribe")]
    assert len(subscribes) == len(set(subscribes)) == 2

    # ParticipantUpdated marks the bot's tile and clears it.
    assert result["botAway"] == [BOT_ID]
    assert result["botBack"] == []
    assert {"self": True, "status": RECONNECTING, "bot": False} in result["shown"]
    assert any(s["bot"] is True and s["self"] is False for s in result["shown"])
    assert result["notices"] == []


async def test_a_lost_media_session_reconnects_with_a_media_reconnect_token(
    dev_cert: TlsCredentials,
) -> None:
    result, stack = await _run(dev_cert, MEDIA_LOST)

    # Asked: one MediaReconnectRequest (a request: it has an id), answered with a token.
    assert len(stack.media_requests) == 1 and stack.media_requests[0] != 0
    # Pushed: the unprompted MediaReconnect naming another MH opened the third media session;
    # the one naming the MH the page was connected to was ignored (as the Python client does).
    assert stack.media_tokens == [MEDIA_TOKEN, ASKED_MEDIA_TOKEN, PUSHED_MEDIA_TOKEN]
    # Signaling stayed: one session, no resume.
    assert stack.signaling_sessions == 1
    assert result["asked"]["snapshot"]["state"] == "joined"
    assert result["asked"]["self"] is False
    assert result["pushed"]["stats"]["reconnects"] == {"signaling": 0, "media": 2}
    # "Reconnecting…" showed while media was away, on the own tile and in the status bar.
    assert any(s["self"] is True and s["status"] == RECONNECTING for s in result["shown"])
    assert result["notices"] == []
    # No malformed frame from the page (the fake's echo of a session it closed itself aside).
    assert [e for e in stack.frame_errors if "ClosedResourceError" not in e] == []


# --- the real stack ---------------------------------------------------------------------------
BLACKOUT_S = 5.0
# The MC notices the cut page within this (QUIC idle timeout, docs/protocol.md §13); the page
# does too (QUIC takes the smaller of both ends' idle timeouts). Below the blackout, and not so
# short that a loaded machine (Chromium decoding two pages) idles out the other page too.
MC_IDLE_TIMEOUT_S = 3.0
# Every Playwright wait of the scenario: a reconnection takes a few attempts' backoff.
REAL_WAIT_S = 25.0
OWN_MARKER_SHOWN = """() => {
  const m = document.querySelector("#grid .tile.self .reconnecting");
  return !!m && !m.hidden && document.getElementById("status").textContent === "Reconnecting…";
}"""
MARKER_OF = """(pid) => {
  const m = document.querySelector(`#grid .tile[data-participant-id="${pid}"] .reconnecting`);
  return m ? !m.hidden : null;
}"""
# Marks the tile of `pid` so that the same element can be recognised later.
MARK_TILE = """(pid) => {
  window.__tile = document.querySelector(`#grid .tile[data-participant-id="${pid}"]`);
}"""
# What the page shows over time: [ms since the cut, body's data-state, status bar text].
WATCH_STATES = """() => {
  window.__shown = [];
  const t0 = Date.now();
  const look = () => {
    const now = [document.body.dataset.state, document.getElementById("status").textContent];
    const last = window.__shown.at(-1);
    if (!last || last[1] !== now[0] || last[2] !== now[1]) window.__shown.push([Date.now() - t0, ...now]);
  };
  new MutationObserver(look).observe(document.body,
    {subtree: true, childList: true, attributes: true, characterData: true});
}"""
SAME_TILE = """(pid) =>
  window.__tile === document.querySelector(`#grid .tile[data-participant-id="${pid}"]`)"""


def _frames(page: Page, pid: str) -> int:
    return int(page.evaluate("(pid) => window.darktower.stats.decodedFrames[pid] ?? 0", pid))


def _notices(page: Page) -> list[str]:
    return page.locator("#notices li").all_text_contents()


async def test_a_page_cut_off_for_5_s_shows_it_and_decodes_the_other_again(
    tmp_path: pathlib.Path,
) -> None:
    results: dict[str, Any] = {}
    async with open_services(
        tmp_path / "data",
        gc={"dev_http_port": 0},
        mc={"idle_timeout_s": MC_IDLE_TIMEOUT_S},
        mh={},
    ) as services:
        assert services.gc is not None
        page_url = services.gc.page_url
        meeting = await services.create_meeting("reconnect")
        signal = services.signal_url.split("/")[2]
        media = services.media_url.split("/")[2]
        async with (
            open_udp_proxy(_host_port(signal)) as to_mc,
            open_udp_proxy(_host_port(media)) as to_mh,
        ):
            via = {
                signal: "{}:{}".format(*to_mc.address),
                media: "{}:{}".format(*to_mh.address),
            }

            def cut() -> None:
                to_mc.pause()
                to_mh.pause()

            def restore() -> None:
                to_mc.resume()
                to_mh.resume()

            def steps(context: BrowserContext) -> None:
                try:
                    _cut_scenario(context, page_url, meeting.meeting_id, via, cut, restore, results)
                except Exception as exc:  # say what each page held
                    for page in context.pages:
                        exc.add_note(f"{page.url}: {_page_state(page)}")
                    raise

            await trio.to_thread.run_sync(lambda: run_in_browser(steps, timeout_s=REAL_WAIT_S))
            results["through_proxy"] = (
                to_mc.stats.to_service.forwarded,
                to_mh.stats.to_service.forwarded,
            )

    ann, ben = results["ann"], results["ben"]
    # Ben's page went through the proxies (the other page dials the services directly).
    assert all(n > 0 for n in results["through_proxy"])
    # Ben showed the reconnecting state; Ann saw Ben's tile marked, and no leave or join.
    assert results["ben_reconnecting"]["state"] == "reconnecting"
    assert results["ann_saw_ben_reconnecting"] is True
    # Back: the same participant, each decoding the other's video again.
    after = results["ben_after"]
    assert after["participantId"] == ben["participantId"]
    assert after["state"] == "joined" and after["reconnecting"] is False, results["shown"]
    # Each resume brings one media reconnection and no more (a page that closed its old media
    # session first would be told by the MC to reconnect media again, and again).
    reconnects = after["stats"]["reconnects"]
    assert reconnects["signaling"] >= 1, results["shown"]
    assert reconnects["media"] == reconnects["signaling"], results["shown"]
    assert results["ben_frames_again"] >= results["ben_frames_before"] + WANT_VIDEO_FRAMES
    assert results["ann_frames_again"] >= results["ann_frames_before"] + WANT_VIDEO_FRAMES
    assert results["ann_same_tile"] is True and results["ben_same_tile"] is True
    assert results["ann_after"]["participants"] == [
        {"participantId": ben["participantId"], "name": "Ben"}
    ]
    assert after["participants"] == [{"participantId": ann["participantId"], "name": "Ann"}]
    assert results["ann_marker_after"] is False
    assert results["notices"] == {"ann": [], "ben": []}


def _page_state(page: Page) -> Any:
    try:
        return {
            "snapshot": snapshot(page),
            "notices": _notices(page),
            "status": page.text_content("#status", timeout=1000),
            "shown": page.evaluate("() => window.__shown ?? null"),
            "markers": page.evaluate(
                """() => [...document.querySelectorAll("#grid .tile")].map(t =>
                  [t.dataset.participantId, !t.querySelector(".reconnecting").hidden])"""
            ),
        }
    except Exception as exc:  # a page that is gone or stuck
        return repr(exc)


def _host_port(netloc: str) -> tuple[str, int]:
    host, port = netloc.rsplit(":", 1)
    return host, int(port)


def _cut_scenario(
    context: BrowserContext,
    page_url: str,
    meeting_id: str,
    via: dict[str, str],
    cut: Any,
    restore: Any,
    results: dict[str, Any],
) -> None:
    """Ann and Ben join; Ben dials through the proxies; Ben is cut off for BLACKOUT_S."""
    ann, ben = context.new_page(), context.new_page()
    for page in (ann, ben):
        page.goto(page_url)
        wait_for_hooks(page)
    ben.evaluate("(via) => darktower.connectVia(via)", via)
    join = "([id, name]) => darktower.join({meetingId: id, name})"
    results["ann"] = a = ann.evaluate(join, [meeting_id, "Ann"])
    results["ben"] = b = ben.evaluate(join, [meeting_id, "Ben"])
    aid, bid = a["participantId"], b["participantId"]
    wait_for_frames(ann, bid, WANT_VIDEO_FRAMES)
    wait_for_frames(ben, aid, WANT_VIDEO_FRAMES)
    ann.evaluate(MARK_TILE, bid)
    ben.evaluate(MARK_TILE, aid)

    ann.evaluate(WATCH_STATES)
    ben.evaluate(WATCH_STATES)
    trio.from_thread.run_sync(cut)
    cut_at = time.monotonic()
    ben.wait_for_function(OWN_MARKER_SHOWN, polling=POLL_MS)
    results["ben_reconnecting"] = snapshot(ben)
    ann.wait_for_function(f"(pid) => ({MARKER_OF})(pid) === true", arg=bid, polling=POLL_MS)
    results["ann_saw_ben_reconnecting"] = True
    # The blackout lasts BLACKOUT_S whatever the pages do meanwhile (a fault, not a wait).
    time.sleep(max(0.0, BLACKOUT_S - (time.monotonic() - cut_at)))
    results["ann_frames_before"] = _frames(ann, bid)
    results["ben_frames_before"] = _frames(ben, aid)
    trio.from_thread.run_sync(restore)

    ben.wait_for_function(
        "() => darktower.state === 'joined' && !darktower.reconnecting", polling=POLL_MS
    )
    results["ben_frames_again"] = wait_for_frames(
        ben, aid, results["ben_frames_before"] + WANT_VIDEO_FRAMES
    )
    results["ann_frames_again"] = wait_for_frames(
        ann, bid, results["ann_frames_before"] + WANT_VIDEO_FRAMES
    )
    ann.wait_for_function(f"(pid) => ({MARKER_OF})(pid) === false", arg=bid, polling=POLL_MS)
    results["ann_marker_after"] = ann.evaluate(MARKER_OF, bid)
    results["ben_after"] = snapshot(ben)
    results["ann_after"] = snapshot(ann)
    results["ann_same_tile"] = ann.evaluate(SAME_TILE, bid)
    results["ben_same_tile"] = ben.evaluate(SAME_TILE, aid)
    results["notices"] = {"ann": _notices(ann), "ben": _notices(ben)}
    results["shown"] = {
        "ann": ann.evaluate("window.__shown"),
        "ben": ben.evaluate("window.__shown"),
    }
