"""The page reconnects by itself (docs/protocol.md §13), in Chromium. Against stand-in servers
(tests/browser/_fakestack.py, with resume and media reconnection added here):

* the MC drops the signaling session: the page shows "Reconnecting…" (status bar and own tile),
  resumes with JoinRequest{meeting_id, resume_token}, keeps its participant id and tiles,
  reconciles the participant list, reconnects media with the new token and decodes again;
* ParticipantUpdated{RECONNECTING} marks another participant's tile, CONNECTED clears it;
* the media session alone is lost: MediaReconnectRequest, a new media session with the
  MediaReconnect's token; an unprompted MediaReconnect moves the media session too.

Against the real stack: test_reconnect_real.py.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio

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

from .._browser import run_page_script
from ._fakestack import BOT_ID, MEDIA_TOKEN, MEETING_ID, PAGE_ID, FakeStack, _bot
from ._static import serve_web

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
