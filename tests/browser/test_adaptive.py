"""Adaptive media in the page (docs/protocol.md §17), in Chromium against stand-in servers
(tests/browser/_fakestack.py, extended here): the camera published as three simulcast layers
(one QUIC stream and one stream id each), fewer when the browser cannot encode three; the
MH's feedback pausing and resuming a layer (resumed with a key frame) and capping the encoders'
bitrates (lifted, back to the maximum); key frames per layer; the audio level in header byte 40;
ActiveSpeakers highlighting a tile; and on the receiving side, the layer that arrives, the MH's
quality update in the tile's stats overlay and the page's own sparse reports.

The bot (the page's echo) publishes a simulcast video of two layers here: the stand-in MH sends
it the page's top or low layer as one of them (switching at a key frame, as the MH does).
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytest
import trio

from darktower.frames import FrameDecoder
from darktower.protocol.pb.v1 import common_pb2 as common
from darktower.protocol.pb.v1 import signaling_pb2 as sig
from darktower.transport import (
    ServerConfig,
    TlsCredentials,
    WebTransportServer,
    WebTransportSession,
    WebTransportStream,
    generate_dev_certificate,
)

from .._browser import run_page_script
from . import _fakestack
from ._fakestack import BOT_AUDIO, BOT_ID, BOT_VIDEO, MEETING_ID, PAGE_ID, FakeStack
from ._pages import POLL_MS, run_in_browser, snapshot, wait_for_frames, wait_for_hooks
from ._static import BLANK_PAGE, serve_web

if TYPE_CHECKING:
    from playwright.sync_api import BrowserContext, Page

pytestmark = pytest.mark.browser

# The bot's simulcast layers: the page's top layer arrives as BOT_HIGH, its low one as BOT_LOW.
BOT_HIGH = uuid.UUID("00000000-0000-4000-8000-00000000b0c1")
BOT_LOW = uuid.UUID("00000000-0000-4000-8000-00000000b0c3")
BOT_SCREEN = uuid.UUID("00000000-0000-4000-8000-00000000b0d1")
LAYER_SIZES = [(640, 480), (320, 240), (160, 120)]
LAYER_BITRATES = [500_000, 150_000, 50_000]
WANT_FRAMES = 20
# Frames already in a paused layer's encoder still come out (at most its queue of 2, and one
# being encoded).
IN_FLIGHT = 3
# Frames of the top layer a pause lasts (20 a second: the fake camera's rate).
PAUSE_FRAMES = 10
HEADER_LEVEL = 40
LEVEL_PRESENT = 0x80


_PLAIN_BOT = _fakestack._bot


@pytest.fixture(scope="module")
def dev_cert() -> TlsCredentials:
    return generate_dev_certificate()


def _simulcast_bot() -> sig.Participant:
    bot = _PLAIN_BOT()
    video = bot.streams[0]
    assert video.stream_id == str(BOT_VIDEO)
    video.metadata.video.simulcast_layers.extend(
        [
            common.SimulcastLayer(
                layer_id=str(BOT_HIGH), width=640, height=480, max_bitrate=500_000
            ),
            common.SimulcastLayer(layer_id=str(BOT_LOW), width=160, height=120, max_bitrate=50_000),
        ]
    )
    return bot


class AdaptiveStack(FakeStack):
    """The stand-ins, recording every frame the page publishes by its wire id (frame type,
    sequence, header byte 40), and letting the test speak as the MC (:meth:`say`)."""

    def __init__(self, cert: TlsCredentials, trio_token: trio.lowlevel.TrioToken) -> None:
        super().__init__(cert, trio_token)
        self.wire: dict[str, list[tuple[int, int, int]]] = defaultdict(list)
        self.page_send: Callable[[sig.ServerMessage], Any] | None = None
        self.echo_low = False  # the bot's video is the page's low layer (else its top one)
        self.video_streams: list[str] = []  # the page's video layer ids, top first

    def publishes(self) -> list[sig.PublishStream]:
        return [m.publish for m in self.received if m.HasField("publish")]

    def video(self) -> sig.PublishStream:
        (video,) = [p for p in self.publishes() if p.stream_type == common.VIDEO_CAMERA]
        return video

    async def say(self, message: sig.ServerMessage) -> None:
        assert self.page_send is not None
        await self.page_send(message)

    async def _mc_commands(self, session: WebTransportSession, send: Any, end: Any) -> None:
        self.page_send = send
        await super()._mc_commands(session, send, end)

    async def _mc_handle(self, message: sig.ClientMessage, send: Any, end: Any) -> None:
        if message.HasField("publish") and message.publish.stream_type == common.VIDEO_CAMERA:
            layers = message.publish.metadata.video.simulcast_layers
            self.video_streams = [la.layer_id for la in layers] or [message.publish.stream_id]
        if message.HasField("quality"):  # the page's own report: acknowledged
            await send(
                sig.ServerMessage(
                    request_id=message.request_id, ack=sig.Ack(stream_id=message.quality.stream_id)
                )
            )
            return
        await super()._mc_handle(message, send, end)

    async def _echo(self, session: WebTransportSession, stream: WebTransportStream) -> None:
        """Each frame recorded; the top or the low video layer and the audio back as the bot's,
        a switch of layer at the new layer's key frame."""
        decoder = FrameDecoder()
        out = None
        try:
            while data := await stream.receive_some():
                decoder.receive_data(data)
                for frame in decoder:
                    wire_id = str(frame.stream_id)
                    raw = bytearray(frame.raw)
                    self.wire[wire_id].append((raw[1], frame.sequence, raw[HEADER_LEVEL]))
                    target = self._target(wire_id, raw[1])
                    if target is None:
                        continue
                    if out is None:
                        out = await session.open_unidirectional_stream()
                    raw[2:18] = target.bytes
                    await out.send_all(bytes(raw))
        except trio.BrokenResourceError:
            return
        except Exception as exc:  # a malformed frame from the page: record for the test
            self.frame_errors.append(repr(exc))

    def _target(self, wire_id: str, frame_type: int) -> uuid.UUID | None:
        audio = [p.stream_id for p in self.publishes() if p.stream_type == common.AUDIO]
        if wire_id in audio:
            return BOT_AUDIO if str(BOT_AUDIO) in self.subscribed else None
        if str(BOT_VIDEO) not in self.subscribed or not self.video_streams:
            return None
        want = self.video_streams[-1] if self.echo_low else self.video_streams[0]
        if wire_id != want:
            return None
        current = getattr(self, "_current", None)
        if current != want:
            if frame_type != 1:
                return None
            self._current = want
        return BOT_LOW if self.echo_low else BOT_HIGH


async def _run(
    cert: TlsCredentials, scenario: Callable[[BrowserContext, str, AdaptiveStack], Any]
) -> tuple[Any, AdaptiveStack]:
    stack = AdaptiveStack(cert, trio.lowlevel.current_trio_token())
    with serve_web(api=stack.api) as base:
        async with trio.open_nursery() as nursery:
            config = ServerConfig(
                tls=cert, host="127.0.0.1", port=0, allowed_origins=frozenset({base})
            )
            server = WebTransportServer(config, stack.routes_table())
            host, port = await nursery.start(server.run)
            stack.mc_url = f"https://{host}:{port}/v1/signal"
            stack.mh_url = f"https://{host}:{port}/v1/media"
            result = await trio.to_thread.run_sync(
                run_in_browser, lambda context: scenario(context, base, stack)
            )
            nursery.cancel_scope.cancel()
    return result, stack


def _join(context: BrowserContext, base: str, before_join: str | None = None) -> Page:
    page = context.new_page()
    page.goto(f"{base}/m/{MEETING_ID}")
    wait_for_hooks(page)
    if before_join:
        page.evaluate(before_join)
    page.evaluate("(id) => darktower.join({meetingId: id, name: 'Alice'})", MEETING_ID)
    return page


def _say(stack: AdaptiveStack, **message: Any) -> None:
    trio.from_thread.run(stack.say, sig.ServerMessage(**message))


def _wait_sent(page: Page, layer_id: str, count: int) -> int:
    page.wait_for_function(
        "([id, n]) => (darktower.stats.publishedLayers[id]?.sent ?? 0) >= n",
        arg=[layer_id, count],
        polling=POLL_MS,
    )
    return _sent(page, layer_id)


def _sent(page: Page, layer_id: str) -> int:
    return int(page.evaluate("(id) => darktower.stats.publishedLayers[id].sent", layer_id))


def _feedback(
    stack: AdaptiveStack, active: list[bool], available: int = 0, caps: tuple[int, ...] = (0, 0, 0)
) -> None:
    video = stack.video()
    layers = [
        common.LayerFeedback(
            layer_id=la.layer_id, active=on, subscribers=int(on), available_bitrate=cap
        )
        for la, on, cap in zip(video.metadata.video.simulcast_layers, active, caps, strict=True)
    ]
    update = sig.StreamQualityUpdate(
        stream_id=video.stream_id, available_bitrate=available, layers=layers
    )
    _say(stack, quality=update)


async def test_three_layers_paused_resumed_with_a_key_frame_and_capped(
    dev_cert: TlsCredentials, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_fakestack, "_bot", _simulcast_bot)

    def scenario(context: BrowserContext, base: str, stack: AdaptiveStack) -> dict[str, Any]:
        page = _join(context, base)
        out: dict[str, Any] = {}
        top, mid, low = stack.video_streams
        for layer in (top, mid, low):
            _wait_sent(page, layer, WANT_FRAMES)
        out["decoded"] = wait_for_frames(page, BOT_ID, WANT_FRAMES)
        # A key frame of the middle layer just now: the next periodic one is 2 s away, further
        # than the pause below lasts.
        keys = int(page.evaluate("(id) => darktower.stats.publishedLayers[id].keyFramesSent", mid))
        _say(stack, key_frame_request=common.KeyFrameRequest(stream_id=mid))
        page.wait_for_function(
            "([id, n]) => darktower.stats.publishedLayers[id].keyFramesSent > n",
            arg=[mid, keys],
            polling=POLL_MS,
        )
        # Nobody receives the middle layer: it is no longer encoded.
        _feedback(stack, [True, False, True])
        page.wait_for_function(
            "(id) => darktower.stats.publishedLayers[id].paused", arg=mid, polling=POLL_MS
        )
        settled = _wait_sent(page, top, _sent(page, top) + IN_FLIGHT)
        paused_at = _sent(page, mid)
        _wait_sent(page, top, settled + PAUSE_FRAMES)
        out["paused_sent"] = (paused_at, _sent(page, mid))
        out["wire_at_resume"] = len(stack.wire[mid])
        # Someone needs it again: it resumes, with a key frame.
        _feedback(stack, [True, True, True])
        _wait_sent(page, mid, paused_at + WANT_FRAMES)
        # The top layer capped at 200 kbit/s, then the cap lifts: back to its 500 kbit/s.
        _feedback(stack, [True, True, True], available=200_000)
        page.wait_for_function(
            "(id) => darktower.stats.publishedLayers[id].bitrate === 200000",
            arg=top,
            polling=POLL_MS,
        )
        out["capped"] = snapshot(page)["stats"]["publishedLayers"]
        # A layer's own figure comes before the stream's.
        _feedback(stack, [True, True, True], available=200_000, caps=(260_000, 0, 0))
        page.wait_for_function(
            "(id) => darktower.stats.publishedLayers[id].bitrate === 260000",
            arg=top,
            polling=POLL_MS,
        )
        _feedback(stack, [True, True, True], available=0)
        page.wait_for_function(
            "(id) => darktower.stats.publishedLayers[id].bitrate === 500000",
            arg=top,
            polling=POLL_MS,
        )
        # A key frame request for the low layer: its next frames include a key frame.
        out["wire_at_request"] = len(stack.wire[low])
        _say(stack, key_frame_request=common.KeyFrameRequest(stream_id=low))
        _wait_sent(page, low, _sent(page, low) + IN_FLIGHT + 1)
        out["snapshot"] = snapshot(page)
        # The own tile's overlay shows each layer, a paused one as such.
        _feedback(stack, [True, True, False])
        page.wait_for_function(
            f"""() => document.querySelector('#grid .tile[data-participant-id="{PAGE_ID}"] .stats')
              .textContent === '480p 500k · 240p 150k · 120p paused'""",
            polling=POLL_MS,
        )
        return out

    result, stack = await _run(dev_cert, scenario)
    video = stack.video()
    layers = video.metadata.video.simulcast_layers
    assert [(la.width, la.height) for la in layers] == LAYER_SIZES
    assert [la.max_bitrate for la in layers] == LAYER_BITRATES
    ids = [la.layer_id for la in layers]
    assert len({*ids, video.stream_id}) == 4
    for layer_id in ids:
        uuid.UUID(layer_id)
        # Each layer on the wire under its own id, from a key frame on.
        assert stack.wire[layer_id][0][0] == 1
    assert (
        str(uuid.UUID(video.stream_id)) not in stack.wire
    )  # a simulcast stream's frames are its layers'
    assert result["decoded"] >= WANT_FRAMES
    top, mid, low = ids
    before, after = result["paused_sent"]
    assert after == before  # nothing encoded while paused
    resumed = stack.wire[mid][result["wire_at_resume"] :]
    assert resumed and resumed[0][0] == 1  # resumed with a key frame
    published = result["snapshot"]["stats"]["publishedLayers"]
    assert published[mid]["resumes"] == 1 and published[mid]["paused"] is False
    capped = result["capped"]
    assert [capped[i]["bitrate"] for i in ids] == [200_000, 150_000, 50_000]
    assert published[top]["bitrate"] == 500_000
    after_request = stack.wire[low][result["wire_at_request"] :][: IN_FLIGHT + 1]
    assert 1 in [t for t, _, _ in after_request]
    assert stack.frame_errors == []


async def test_a_browser_that_encodes_two_sizes_publishes_two_layers(
    dev_cert: TlsCredentials,
) -> None:
    # This browser, as far as the page can tell, does not encode above 320x240.
    limit = """() => {
      const check = VideoEncoder.isConfigSupported.bind(VideoEncoder);
      VideoEncoder.isConfigSupported = async (c) =>
        c.width > 320 ? {supported: false, config: c} : check(c);
    }"""

    def scenario(context: BrowserContext, base: str, stack: AdaptiveStack) -> dict[str, Any]:
        page = _join(context, base, limit)
        for layer in stack.video_streams:
            _wait_sent(page, layer, WANT_FRAMES)
        return snapshot(page)

    result, stack = await _run(dev_cert, scenario)
    layers = stack.video().metadata.video.simulcast_layers
    assert [(la.width, la.height) for la in layers] == LAYER_SIZES[1:]
    assert sorted(result["stats"]["publishedLayers"]) == sorted(la.layer_id for la in layers)


async def test_audio_frames_carry_their_level(dev_cert: TlsCredentials) -> None:
    """Chromium's fake microphone beeps (about -7 dBov) and is silent in between."""

    def scenario(context: BrowserContext, base: str, stack: AdaptiveStack) -> Any:
        page = _join(context, base)
        page.wait_for_function("darktower.stats.sent.audio >= 150", polling=POLL_MS)
        return snapshot(page)

    _, stack = await _run(dev_cert, scenario)
    (audio,) = [p.stream_id for p in stack.publishes() if p.stream_type == common.AUDIO]
    frames = stack.wire[audio]
    assert len(frames) >= 150
    assert all(level & LEVEL_PRESENT for _, _, level in frames)
    levels = [level & 0x7F for _, _, level in frames]
    assert min(levels) <= 20  # the beeps
    assert max(levels) >= 60  # between them
    # Video frames carry no level.
    for layer in stack.video_streams:
        assert {level for _, _, level in stack.wire[layer]} == {0}


async def test_active_speakers_highlight_the_tile_and_a_received_stream_shows_its_stats(
    dev_cert: TlsCredentials, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_fakestack, "_bot", _simulcast_bot)
    speaking = """() => [...document.querySelectorAll("#grid .tile.speaking")].map(
      t => t.dataset.participantId)"""
    overlay = f"""() => document.querySelector(
      '#grid .tile[data-participant-id="{BOT_ID}"] .stats').textContent"""
    layer_of = f"() => darktower.stats.layers['{BOT_VIDEO}']?.layerId"
    pinned_tiles = """() => [...document.querySelectorAll("#grid .tile.pinned")].map(
      t => t.dataset.participantId)"""

    def scenario(context: BrowserContext, base: str, stack: AdaptiveStack) -> dict[str, Any]:
        page = _join(context, base)
        out: dict[str, Any] = {}
        wait_for_frames(page, BOT_ID, WANT_FRAMES)
        out["high"] = page.evaluate(f"() => darktower.stats.layers['{BOT_VIDEO}']")
        _say(stack, active_speakers=sig.ActiveSpeakers(participant_ids=[BOT_ID, PAGE_ID]))
        page.wait_for_function(f"({speaking})().length === 1", polling=POLL_MS)
        out["bot_speaks"] = (page.evaluate(speaking), snapshot(page)["activeSpeakers"])
        _say(stack, active_speakers=sig.ActiveSpeakers(participant_ids=[PAGE_ID]))
        page.wait_for_function(f"({speaking})()[0] === '{PAGE_ID}'", polling=POLL_MS)
        out["page_speaks"] = (page.evaluate(speaking), page.evaluate("darktower.activeSpeakers"))
        # The MH's update for the bot's video: the layer it sends, paused, its estimate.
        update = sig.StreamQualityUpdate(
            stream_id=str(BOT_VIDEO),
            available_bitrate=280_000,
            rtt_ms=42,
            packet_loss=0.05,
            layer_id=str(BOT_LOW),
            paused=True,
        )
        _say(stack, quality=update)
        page.wait_for_function(f"({overlay})().includes('RTT 42 ms')", polling=POLL_MS)
        out["overlay"] = page.evaluate(overlay)
        # The bot's low layer arrives instead: the page sees which one.
        stack.echo_low = True
        page.wait_for_function(f"({layer_of})() === '{BOT_LOW}'", polling=POLL_MS)
        frames = int(page.evaluate(f"darktower.stats.decodedFrames['{BOT_ID}']"))
        wait_for_frames(page, BOT_ID, frames + WANT_FRAMES)
        out["low"] = page.evaluate(f"() => darktower.stats.layers['{BOT_VIDEO}']")
        # The person pins the bot's video, then unpins it with the tile's button.
        page.evaluate("(pid) => darktower.pin(pid)", BOT_ID)
        out["pinned"] = (page.evaluate("darktower.pinned"), page.evaluate(pinned_tiles))
        # A video the bot publishes now is subscribed pinned.
        screen = common.MediaStream(
            stream_id=str(BOT_SCREEN),
            stream_type=common.VIDEO_SCREEN,
            metadata=common.StreamMetadata(codec="VP8"),
        )
        _say(stack, stream_published=sig.StreamPublished(participant_id=BOT_ID, stream=screen))
        page.wait_for_function(
            "(id) => darktower.snapshot().subscriptions.some(s => s.streamId === id)",
            arg=str(BOT_SCREEN),
            polling=POLL_MS,
        )
        page.click(f'#grid .tile[data-participant-id="{BOT_ID}"] .pin')
        page.wait_for_function(f"({pinned_tiles})().length === 0", polling=POLL_MS)
        page.wait_for_function("darktower.pinned.length === 0", polling=POLL_MS)
        # The page's own reports, one stream at a time, a few seconds apart.
        page.wait_for_function("darktower.stats.reports.sent >= 2", timeout=15_000)
        out["snapshot"] = snapshot(page)
        return out

    result, stack = await _run(dev_cert, scenario)
    assert result["bot_speaks"] == ([BOT_ID], [BOT_ID, PAGE_ID])
    assert result["page_speaks"] == ([PAGE_ID], [PAGE_ID])
    high, low = result["high"], result["low"]
    assert (high["layerId"], high["width"], high["height"]) == (str(BOT_HIGH), 640, 480)
    assert (low["layerId"], low["width"], low["height"]) == (str(BOT_LOW), 160, 120)
    assert low["switches"] >= 1 and low["lost"] == 0 and low["bitrate"] > 0
    assert low["server"] == {
        "layerId": str(BOT_LOW),
        "paused": True,
        "availableBitrate": 280_000,
        "rttMs": 42,
        "packetLoss": pytest.approx(0.05),
    }
    assert "paused" in result["overlay"] and "loss 5.0 %" in result["overlay"]
    assert result["pinned"] == ([BOT_ID], [BOT_ID])
    pins = [
        (m.subscribe.stream_id, m.subscribe.options.pinned)
        for m in stack.received
        if m.HasField("subscribe") and m.subscribe.HasField("options")
    ]
    video, screen = str(BOT_VIDEO), str(BOT_SCREEN)
    assert pins == [(video, True), (screen, True), (video, False), (screen, False)]
    reports = [m for m in stack.received if m.HasField("quality")]
    assert len(reports) >= 2
    assert {r.quality.stream_id for r in reports} <= {str(BOT_VIDEO), str(BOT_AUDIO)}
    for r in reports:
        # What the page measured; never a cap of its own (docs/protocol.md §17.2).
        assert r.quality.available_bitrate == 0
        assert 0 <= r.quality.packet_loss <= 1
    assert result["snapshot"]["stats"]["reports"]["failed"] == 0


PLAN_SCRIPT = """
async (sizes) => {
  const S = await import("/static/simulcast.js");
  const out = [];
  for (const [w, h] of sizes) out.push((await S.planLayers(w, h)).map(l => [l.width, l.height]));
  return out;
}
"""


async def test_the_layers_fit_640_by_480_and_halve() -> None:
    sizes = [[640, 480], [1280, 720], [320, 240]]
    with serve_web({"/blank": BLANK_PAGE}) as base:
        result = await trio.to_thread.run_sync(run_page_script, base + "/blank", PLAN_SCRIPT, sizes)
    assert result == [
        [[640, 480], [320, 240], [160, 120]],
        [[640, 360], [320, 180], [160, 90]],
        [[320, 240], [160, 120], [80, 60]],
    ]
