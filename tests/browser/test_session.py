"""The whole page (index.html, app.js, session.js, ...) in Chromium against stand-in servers that
speak the contract over real WebTransport (tests/browser/_fakestack.py): join, publish, subscribe,
decode the other participant's video and audio, host controls, and each way a session ends with
the reason shown to the person."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import trio

from darktower.protocol import PROTOCOL_VERSION
from darktower.protocol.pb.v1 import common_pb2 as common
from darktower.transport import (
    ServerConfig,
    TlsCredentials,
    WebTransportServer,
    generate_dev_certificate,
)

from .._browser import run_page_script
from ._fakestack import BOT_AUDIO, BOT_ID, BOT_NAME, BOT_VIDEO, MEETING_ID, PAGE_ID, FakeStack
from ._pages import POLL_MS, run_in_browser, snapshot, wait_for_frames, wait_for_hooks
from ._static import serve_web

if TYPE_CHECKING:
    from playwright.sync_api import BrowserContext

pytestmark = pytest.mark.browser

WANT_VIDEO_FRAMES = 30
WANT_AUDIO_CHUNKS = 10
# The removed person sees why within 1 s.
REASON_SHOWN_WITHIN_MS = 1000


@pytest.fixture(scope="module")
def dev_cert() -> TlsCredentials:
    return generate_dev_certificate()


COMMON_JS = """
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
const tiles = () => [...document.querySelectorAll("#grid .tile")].map(t => ({
  id: t.dataset.participantId, name: t.querySelector(".name").textContent,
  kick: !!t.querySelector(".kick")}));
const endedView = () => ({text: document.getElementById("end-reason").textContent,
  visible: !document.getElementById("ended").hidden,
  meetingHidden: document.getElementById("meeting").hidden});
await waitFor(() => window.darktower, "the page's hooks");
const d = window.darktower;
const media = async () => {
  await waitFor(() => (d.stats.decodedFrames[botId] ?? 0) >= wantVideo, `${wantVideo} video frames`);
  await waitFor(() => (d.stats.decodedAudio[botId] ?? 0) >= wantAudio, `${wantAudio} audio chunks`);
};
"""


TILES_JS = """() => [...document.querySelectorAll("#grid .tile")].map(t => ({
  id: t.dataset.participantId, name: t.querySelector(".name").textContent,
  kick: !!t.querySelector(".kick")}))"""


def page_script(body: str) -> str:
    return f"async ({{botId, wantVideo, wantAudio, meetingId}}) => {{ {COMMON_JS} {body} }}"


GUEST_KICKED = page_script(
    """
  const joined = await d.join({meetingId, name: "Alice"});
  await media();
  const before = {tiles: tiles(), role: d.role, participants: d.participants};
  const t0 = performance.now();
  await fetch("/test/kick-me", {method: "POST"});
  await waitFor(() => d.endReason, "the end reason");
  const elapsedMs = performance.now() - t0;
  return {joined, before, elapsedMs, snapshot: d.snapshot(), view: endedView(), url: location.pathname};
"""
)

CONNECTION_LOST = page_script(
    """
  await d.join({meetingId, name: "Carol"});
  await fetch("/test/drop", {method: "POST"});
  await waitFor(() => d.endReason, "the end reason");
  return {snapshot: d.snapshot(), view: endedView()};
"""
)

LEAVES = page_script(
    """
  await d.join({meetingId, name: "Dave"});
  await d.leave();
  return {snapshot: d.snapshot(), view: endedView()};
"""
)

UNKNOWN_MEETING = page_script(
    """
  let error = null;
  try { await d.join({meetingId: "no-such-meeting", name: "Eve"}); } catch (e) { error = e.message; }
  return {error, snapshot: d.snapshot()};
"""
)


async def _run(
    stack_cert: TlsCredentials,
    path: str | None,
    script: str | None,
    *,
    scenario: Callable[[BrowserContext], Any] | None = None,
    base_holder: list[str] | None = None,
) -> tuple[Any, FakeStack]:
    """Run ``script`` in a page at ``path``, or ``scenario`` (told the page server's base URL
    through ``base_holder``), against a fresh FakeStack."""
    stack = FakeStack(stack_cert, trio.lowlevel.current_trio_token())
    arg = {
        "botId": BOT_ID,
        "wantVideo": WANT_VIDEO_FRAMES,
        "wantAudio": WANT_AUDIO_CHUNKS,
        "meetingId": MEETING_ID,
    }
    with serve_web(api=stack.api) as base:
        async with trio.open_nursery() as nursery:
            config = ServerConfig(
                tls=stack_cert, host="127.0.0.1", port=0, allowed_origins=frozenset({base})
            )
            server = WebTransportServer(config, stack.routes_table())
            host, port = await nursery.start(server.run)
            stack.mc_url = f"https://{host}:{port}/v1/signal"
            stack.mh_url = f"https://{host}:{port}/v1/media"
            if scenario is not None:
                assert base_holder is not None
                base_holder.append(base)
                result = await trio.to_thread.run_sync(run_in_browser, scenario)
            else:
                assert path is not None and script is not None
                result = await trio.to_thread.run_sync(run_page_script, base + path, script, arg)
            nursery.cancel_scope.cancel()
    return result, stack


def _check_published(stack: FakeStack, name: str) -> None:
    """What the page sent the MC: join, its two streams, its subscriptions."""
    kinds = [m.WhichOneof("message") for m in stack.received]
    assert kinds[0] == "join"
    join = stack.received[0].join
    assert (join.meeting_id, join.participant_name) == (MEETING_ID, name)
    # What this browser decodes, in the page's order of preference (Chromium: all four).
    assert list(join.capabilities.video_codecs) == ["VP8", "VP9", "H264", "AV1"]
    assert list(join.capabilities.audio_codecs) == ["Opus"]
    ids = [m.request_id for m in stack.received if m.request_id]
    assert len(ids) == len(set(ids))  # every request has its own id
    assert {m.protocol_version for m in stack.received} == {PROTOCOL_VERSION}
    publishes = {m.publish.stream_type: m.publish for m in stack.received if m.HasField("publish")}
    assert set(publishes) == {common.VIDEO_CAMERA, common.AUDIO}
    video = publishes[common.VIDEO_CAMERA]
    assert video.metadata.codec == "VP8"
    assert (video.metadata.video.width, video.metadata.video.height) == (640, 480)
    assert publishes[common.AUDIO].metadata.codec == "Opus"
    for p in publishes.values():
        uuid.UUID(p.stream_id)  # the header's stream id in string form
    subscribed = {m.subscribe.stream_id for m in stack.received if m.HasField("subscribe")}
    assert subscribed == {str(BOT_VIDEO), str(BOT_AUDIO)}
    assert stack.forwarded["video"] >= WANT_VIDEO_FRAMES
    assert stack.forwarded["audio"] >= WANT_AUDIO_CHUNKS
    assert stack.frame_errors == []


async def test_guest_sees_the_other_participant_and_is_told_when_removed(
    dev_cert: TlsCredentials,
) -> None:
    result, stack = await _run(dev_cert, f"/m/{MEETING_ID}", GUEST_KICKED)
    _check_published(stack, "Alice")
    assert result["joined"]["participantId"] == PAGE_ID
    assert result["before"]["role"] == "guest"
    assert result["before"]["participants"] == [{"participantId": BOT_ID, "name": BOT_NAME}]
    # Own tile and the bot's, names shown, no host controls for a guest.
    assert result["before"]["tiles"] == [
        {"id": PAGE_ID, "name": "Alice (you)", "kick": False},
        {"id": BOT_ID, "name": BOT_NAME, "kick": False},
    ]
    assert result["snapshot"]["stats"]["decodedFrames"][BOT_ID] >= WANT_VIDEO_FRAMES
    assert result["snapshot"]["endReason"]["name"] == "KICKED"
    assert result["view"] == {
        "text": "You were removed from the meeting",
        "visible": True,
        "meetingHidden": True,
    }
    assert result["elapsedMs"] < REASON_SHOWN_WITHIN_MS
    assert stack.media_origin is not None and stack.media_origin.startswith("http://127.0.0.1:")


async def test_host_creates_kicks_and_ends_the_meeting(
    dev_cert: TlsCredentials, tmp_path: Path
) -> None:
    """Step by step from Python with tests/browser/_pages.py, as the two-page test will be."""
    screenshot = tmp_path / "grid.png"

    def scenario(context: BrowserContext) -> dict[str, Any]:
        page = context.new_page()
        page.goto(base_holder[0] + "/")
        wait_for_hooks(page)
        out: dict[str, Any] = {"joined": page.evaluate("darktower.create({name: 'Hank'})")}
        out["frames"] = wait_for_frames(page, BOT_ID, WANT_VIDEO_FRAMES)
        out["tiles"] = page.evaluate(TILES_JS)
        page.locator("#grid").screenshot(path=screenshot)
        page.evaluate("(pid) => darktower.kick(pid)", BOT_ID)
        out["after_kick"] = page.evaluate(TILES_JS)
        out["end_button"] = page.is_visible("#end-meeting")
        page.evaluate("darktower.endMeeting()")
        page.wait_for_function("darktower.endReason !== null", polling=POLL_MS)
        out["snapshot"] = snapshot(page)
        out["shown"] = page.text_content("#end-reason")
        out["url"] = page.evaluate("location.pathname")
        return out

    base_holder: list[str] = []
    result, stack = await _run(dev_cert, None, None, scenario=scenario, base_holder=base_holder)
    _check_published(stack, "Hank")
    assert result["joined"]["role"] == "host"
    assert result["frames"] >= WANT_VIDEO_FRAMES
    assert result["tiles"][1] == {"id": BOT_ID, "name": BOT_NAME, "kick": True}
    # kick() resolved once the bot had left (this MC does not reply to the kicker).
    assert result["after_kick"] == [{"id": PAGE_ID, "name": "Hank (you)", "kick": False}]
    assert result["end_button"] is True
    kicks = [m.kick.participant_id for m in stack.received if m.HasField("kick")]
    assert kicks == [BOT_ID]
    assert any(m.HasField("end_meeting") for m in stack.received)
    assert result["snapshot"]["endReason"]["name"] == "MEETING_ENDED"
    assert result["shown"] == "The meeting has ended"
    assert result["url"] == f"/m/{MEETING_ID}"  # shareable once created
    assert screenshot.read_bytes().startswith(b"\x89PNG")


async def test_a_session_closed_without_a_reason_is_connection_lost(
    dev_cert: TlsCredentials,
) -> None:
    result, _ = await _run(dev_cert, f"/m/{MEETING_ID}", CONNECTION_LOST)
    assert result["snapshot"]["endReason"]["name"] == "CONNECTION_LOST"
    assert result["view"]["text"] == "Connection lost"


async def test_leave_ends_the_session_voluntarily(dev_cert: TlsCredentials) -> None:
    result, stack = await _run(dev_cert, f"/m/{MEETING_ID}", LEAVES)
    assert any(m.HasField("leave") for m in stack.received)
    assert result["snapshot"]["endReason"]["name"] == "VOLUNTARY"
    assert result["view"]["text"] == "You left the meeting"


async def test_joining_an_unknown_meeting_reports_the_error(dev_cert: TlsCredentials) -> None:
    result, stack = await _run(dev_cert, "/", UNKNOWN_MEETING)
    assert result["error"] == "no such meeting"
    assert stack.received == []
