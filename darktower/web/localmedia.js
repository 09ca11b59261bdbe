// The person's own camera and microphone in a meeting session: captured once, one encoder per
// track, each published as a stream on the session's MediaLink (medialink.js), the video's
// bitrate following the MC's StreamQualityUpdate. `view.setPreview` shows what is captured and
// `view.notice` says when there is nothing to capture; `stats.sent` counts the frames sent.

import { AudioSender, VIDEO_BITRATE, VIDEO_FRAMERATE, VideoSender } from "./codecs.js";
import { StreamType } from "./proto.js";

// Quality updates below this relative change do not reconfigure the encoder.
const BITRATE_HYSTERESIS = 0.2;

export class LocalMedia {
  constructor(view, stats) {
    this.view = view;
    this.stats = stats;
    this.stream = null;
    this.video = null;
    this.audio = null;
    this.videoId = null;
    this.audioId = null;
    this.announced = new Map(); // stream id -> its PublishStream body, to publish it again
  }

  // Camera and microphone (fake devices in tests). A person without them still joins, receive-only.
  async start() {
    if (this.stream) return this.stream;
    try {
      this.stream = await navigator.mediaDevices.getUserMedia({
        video: { width: 640, height: 480, frameRate: VIDEO_FRAMERATE },
        audio: true,
      });
    } catch (e) {
      this.view.notice(`No camera or microphone (${e.message}): joining without them`);
      this.stream = null;
    }
    this.view.setPreview(this.stream);
    return this.stream;
  }

  // Announces each track to the MC (`signaling`, PublishStream), opens its stream on `media` and
  // starts its encoder. Each await may see the session end (`isEnded()`: kick, close): nothing is
  // started after that. `onLoss(what, error)` is told when a publish stream fails.
  async publish(signaling, media, { isEnded, onLoss }) {
    const tracks = this.stream;
    if (!tracks) return;
    const [videoTrack] = tracks.getVideoTracks();
    const [audioTrack] = tracks.getAudioTracks();
    if (videoTrack) {
      const { width = 640, height = 480 } = videoTrack.getSettings();
      const streamId = crypto.randomUUID();
      await this.announce(signaling, {
        streamId,
        streamType: StreamType.VIDEO_CAMERA,
        metadata: {
          codec: "VP8",
          maxBitrate: VIDEO_BITRATE,
          video: { width, height, framerate: VIDEO_FRAMERATE },
        },
      });
      await media.publish(streamId, {
        onNeedKeyFrame: () => this.video?.requestKeyFrame(),
        onError: (e) => onLoss("Video", e),
      });
      if (isEnded()) return;
      this.videoId = streamId;
      this.video = new VideoSender(videoTrack, (type, payload, ts) => {
        if (media.send(streamId, type, payload, ts)) this.stats.sent.video++;
      });
    }
    if (audioTrack) {
      const streamId = crypto.randomUUID();
      await this.announce(signaling, {
        streamId,
        streamType: StreamType.AUDIO,
        metadata: { codec: "Opus", maxBitrate: 64_000 },
      });
      await media.publish(streamId, {
        onError: (e) => onLoss("Audio", e),
      });
      if (isEnded()) return;
      this.audioId = streamId;
      this.audio = new AudioSender(audioTrack, (type, payload, ts) => {
        if (media.send(streamId, type, payload, ts)) this.stats.sent.audio++;
      });
    }
  }

  // PublishStream, remembered for republish().
  async announce(signaling, body) {
    await signaling.request("publish", body);
    this.announced.set(body.streamId, body);
  }

  // After a rejoin (docs/protocol.md §13): every stream is published again at the new MC with its
  // stream id and metadata (its encoder keeps running; medialink.js opens its streams on the new
  // media session).
  async republish(signaling) {
    for (const body of this.announced.values()) await signaling.request("publish", body);
  }

  // A KeyFrameRequest for `streamId`: the video encoder's next frame is a key frame.
  requestKeyFrame(streamId) {
    if (streamId === this.videoId) this.video?.requestKeyFrame();
  }

  onQuality(update) {
    const sender = this.video;
    if (update.streamId !== this.videoId || !sender || !update.availableBitrate) return;
    const target = Math.min(VIDEO_BITRATE, update.availableBitrate);
    if (Math.abs(target - sender.bitrate) / sender.bitrate > BITRATE_HYSTERESIS) {
      sender.setBitrate(target);
    }
  }

  // The encoders stop.
  stopEncoders() {
    this.video?.stop();
    this.audio?.stop();
  }

  // The camera and microphone are released and the preview cleared.
  release() {
    for (const track of this.stream?.getTracks() ?? []) track.stop();
    this.view.setPreview(null);
  }
}
