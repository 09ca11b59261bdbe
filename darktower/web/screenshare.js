// The own screen share (docs/protocol.md §18.1): getDisplayMedia's track published as a
// VIDEO_SCREEN stream, one VP8 layer, on the session's MediaLink like the camera. The MC sets
// the own `sharing` while it is published. It stops with stop() (the person's button), with the
// browser's own "Stop sharing" (the track ends), or when the MC ends it (a host's moderation:
// ended()). `stats.sent.screen` counts its frames sent.

import { VideoSender } from "./codecs.js";
import { StreamType } from "./proto.js";

// The screen as it is captured and sent: at most 1280×720 at 15 frames a second, 1.5 Mbit/s.
export const SCREEN_MAX = Object.freeze({ width: 1280, height: 720, framerate: 15 });
export const SCREEN_BITRATE = 1_500_000;

class ScreenShare {
  constructor(local, capture, view, onStopped) {
    this.local = local;
    this.capture = capture;
    this.view = view;
    this.onStopped = onStopped;
    this.streamId = crypto.randomUUID();
    this.sender = null;
    this.done = false;
  }

  requestKeyFrame() {
    this.sender?.requestKeyFrame();
  }

  // The person stops sharing: the stream is unpublished at the MC and released here.
  async stop() {
    if (this.done) return;
    const signaling = this.local.ctx?.signaling();
    const published = this.local.announced.has(this.streamId);
    this.ended();
    if (published && signaling) {
      await signaling.request("unpublish", { streamId: this.streamId }).catch(() => {});
    }
  }

  // Released here (the MC ended it, or stop()): the encoder, the capture, the publish stream.
  ended() {
    if (this.done) return;
    this.done = true;
    this.sender?.stop();
    for (const track of this.capture.getTracks()) track.stop();
    this.local.announced.delete(this.streamId);
    this.local.ctx?.media.unpublish(this.streamId);
    if (this.local.screen === this) this.local.screen = null;
    this.view.setScreenPreview?.(null);
    this.onStopped();
  }
}

// Asks the person for a screen (getDisplayMedia: the browser's picker) and publishes it.
// `local` is the session's LocalMedia (published already: its ctx); resolves once the stream is
// published and its encoder runs; rejects when the person cancels or the MC refuses it
// (FORBIDDEN while the host blocks sharing).
export async function startScreenShare(local, stats, view, { onStopped = () => {} } = {}) {
  if (!local.ctx) throw new Error("not in a meeting");
  const { signaling, media, isEnded, onLoss } = local.ctx;
  const capture = await navigator.mediaDevices.getDisplayMedia({
    video: {
      width: { max: SCREEN_MAX.width },
      height: { max: SCREEN_MAX.height },
      frameRate: { max: SCREEN_MAX.framerate },
    },
    audio: false,
  });
  const [track] = capture.getVideoTracks();
  const share = new ScreenShare(local, capture, view, onStopped);
  local.screen = share;
  try {
    const { width = SCREEN_MAX.width, height = SCREEN_MAX.height } = track.getSettings();
    await local.announce(signaling(), {
      streamId: share.streamId,
      streamType: StreamType.VIDEO_SCREEN,
      metadata: {
        codec: "VP8",
        maxBitrate: SCREEN_BITRATE,
        video: { width, height, framerate: SCREEN_MAX.framerate, simulcastLayers: [] },
      },
    });
    await media.publish(share.streamId, {
      onNeedKeyFrame: () => share.requestKeyFrame(),
      onError: (e) => onLoss("Screen share", e, () => local.screen === share),
    });
    if (isEnded() || share.done) throw new Error("the screen share ended while it started");
    stats.sent.screen ??= 0;
    share.sender = new VideoSender(
      track,
      (type, payload, ts) => {
        if (media.send(share.streamId, type, payload, ts)) stats.sent.screen++;
      },
      { bitrate: SCREEN_BITRATE },
    );
  } catch (e) {
    await share.stop();
    throw e;
  }
  // The browser's own "Stop sharing".
  track.addEventListener("ended", () => share.stop());
  view.setScreenPreview?.(capture);
  return share;
}
