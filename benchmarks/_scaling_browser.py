"""The load of ``media_workers_scaling`` (benchmarks/_failover_scaling.py) in headless Chromium:
every sender and receiver of the rooms is a WebTransport session of one page, so the load runs
on Chromium's native QUIC stack and costs a fraction of the CPU an MH spends per frame (a
Python QUIC client costs about as much as the MH, and on two cores it would compete with two
MHs for the same CPU). The system Chromium (``scripts/setup-test-system.sh`` installs it) is
driven by Playwright; nothing is downloaded and nothing leaves 127.0.0.1.

Run as a process by the driver: ``python benchmarks/_scaling_browser.py ROOMS_JSON CERT_HASH
WARM WINDOW``; it prints READY once every session is open, starts at a line on stdin, counts
the receivers' bytes over WINDOW from WARM s later and prints {"frames", "elapsed"}.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import json
import os
import sys
import threading
import uuid
from collections.abc import Iterator
from typing import Any

CHROMIUM = os.environ.get("DARKTOWER_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
    # A background page must not be throttled: it is the load.
    "--disable-background-timer-throttling",
    "--disable-renderer-backgrounding",
]
PAGE = b"<!doctype html><title>load</title>"

# The page's side. Senders write two ready-made frames (a key frame every `keyEvery`) as fast
# as their stream takes them; receivers count the bytes of every stream the MH opens to them
# (it resets a stream whose sends were not taken in time and goes on on a new one).
SCRIPT = """
async ({rooms, hash, keyEvery}) => {
  const pin = {serverCertificateHashes: [{algorithm: "sha-256",
    value: Uint8Array.from(hash.match(/../g).map(h => parseInt(h, 16)))}]};
  const state = window.load = {bytes: 0, counting: false, go: null, errors: 0};
  const started = new Promise(resolve => { state.go = resolve; });
  const bytes = b64 => Uint8Array.from(atob(b64), c => c.charCodeAt(0));
  async function drain(stream) {
    const reader = stream.getReader();
    try {
      for (;;) {
        const {value, done} = await reader.read();
        if (done) return;
        if (state.counting) state.bytes += value.byteLength;
      }
    } catch (e) { /* a reset stream: the MH goes on on a new one */ }
  }
  async function receive(url) {
    const wt = new WebTransport(url, pin);
    await wt.ready;
    (async () => {
      const streams = wt.incomingUnidirectionalStreams.getReader();
      for (;;) {
        const {value, done} = await streams.read();
        if (done) return;
        drain(value);
      }
    })().catch(() => { state.errors += 1; });
  }
  async function send(room) {
    const wt = new WebTransport(room.sender, pin);
    await wt.ready;
    const stream = await wt.createBidirectionalStream();
    const writer = stream.writable.getWriter();
    const key = bytes(room.key), delta = bytes(room.delta);
    (async () => {
      await started;
      for (let i = 0; ; i++) {
        await writer.ready;
        writer.write(i % keyEvery === 0 ? key : delta);
      }
    })().catch(() => { state.errors += 1; });
  }
  const connect = async () => {
    for (const room of rooms) {
      for (const url of room.receivers) await receive(url);
      await send(room);
    }
  };
  // A session that never becomes ready fails the point instead of hanging the driver.
  const late = new Promise((_, reject) =>
    setTimeout(() => reject(new Error("sessions not ready within 60 s")), 60000));
  await Promise.race([connect(), late]);
  return "READY";
}
"""


@contextlib.contextmanager
def _blank_page() -> Iterator[str]:
    """A blank page on http://127.0.0.1:<port> (a secure context, as WebTransport needs)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(PAGE)))
            self.end_headers()
            self.wfile.write(PAGE)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def encoded_frames(stream: str) -> tuple[bytes, bytes]:
    """The sender's key and delta frame for ``stream``: 1,046 bytes each, as the Python load."""
    from benchmarks._fanout_load import SAT_PAYLOAD
    from darktower.frames import FrameFlags, FrameHeader, FrameType

    def one(frame_type: FrameType, fill: bytes) -> bytes:
        header = FrameHeader(
            frame_type=frame_type,
            stream_id=uuid.UUID(stream),
            timestamp_us=0,
            sequence=0,
            payload_length=SAT_PAYLOAD,
            flags=FrameFlags.END_OF_FRAME,
        )
        return header.encode() + fill * SAT_PAYLOAD

    return one(FrameType.VIDEO_KEY, b"k"), one(FrameType.VIDEO_DELTA, b"d")


def run(rooms_json: str, cert_hash: str, warm: float, window: float) -> None:
    import base64
    import time

    from playwright.sync_api import sync_playwright

    from benchmarks._fanout_load import SAT_KEY_EVERY, SAT_PAYLOAD
    from darktower.frames import HEADER_SIZE

    rooms = json.loads(rooms_json)
    for room in rooms:
        key, delta = encoded_frames(room["stream"])
        room["key"] = base64.b64encode(key).decode()
        room["delta"] = base64.b64encode(delta).decode()
    asyncio.set_event_loop_policy(asyncio.DefaultEventLoopPolicy())
    with _blank_page() as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.set_default_timeout(60_000)
            page.goto(url)
            arg = {"rooms": rooms, "hash": cert_hash, "keyEvery": SAT_KEY_EVERY}
            print(page.evaluate(SCRIPT, arg), flush=True)
            sys.stdin.readline()
            page.evaluate("() => window.load.go()")
            time.sleep(warm)
            start = page.evaluate(
                "() => { window.load.counting = true; return performance.now(); }"
            )
            time.sleep(window)
            stop, counted, errors = page.evaluate(
                "() => { window.load.counting = false;"
                " return [performance.now(), window.load.bytes, window.load.errors]; }"
            )
            elapsed = (stop - start) / 1000
            frames = counted / (SAT_PAYLOAD + HEADER_SIZE)
            print(json.dumps({"frames": frames, "elapsed": elapsed, "errors": errors}), flush=True)
        finally:
            browser.close()


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    run(sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4]))
