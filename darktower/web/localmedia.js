// The person's own camera and microphone in a meeting session: captured once, published on the
// session's MediaLink (medialink.js). The camera is published as simulcast (simulcast.js: up to
// three layers, each its own stream id; one plain stream when the browser encodes only one),
// its encoders paused, resumed and capped by the MH's StreamQualityUpdate (docs/protocol.md
// §17.3); each audio frame carries its level (docs/protocol.md §17.1). `view.setPreview` shows
// what is captured and `view.notice` says when there is nothing to capture; `stats.sent` counts
// the frames sent, `stats.publishedLayers` each video layer's (layer id -> {width, height,
// maxBitrate, bitrate, paused, encoded, keyFrames, dropped, resumes, sent, keyFramesSent}).

import { AudioSender, VIDEO_FRAMERATE } from "./codecs.js";
import { FrameType } from "./frames.js";
import { StreamType } from "./proto.js";
import { SimulcastSender, planLayers } from "./simulcast.js";

export class LocalMedia {
  constructor(view, stats) {
    this.view = view;
    this.stats = stats;
    stats.publishedLayers ??= {};
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
    if (videoTrack) await this.publishVideo(videoTrack, signaling, media, { isEnded, onLoss });
    if (isEnded()) return;
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
      this.audio = new AudioSender(audioTrack, (type, payload, ts, level) => {
        if (media.send(streamId, type, payload, ts, level)) this.stats.sent.audio++;
      });
    }
  }

  // The camera: PublishStream with its simulcast layers (docs/protocol.md §7), a publish stream
  // per layer, then the encoders.
  async publishVideo(videoTrack, signaling, media, { isEnded, onLoss }) {
    const { width = 640, height = 480 } = videoTrack.getSettings();
    const layers = await planLayers(width, height);
    if (layers.length === 0) {
      this.view.notice("This browser cannot encode the camera: joining without video");
      return;
    }
    const streamId = crypto.randomUUID();
    const simulcast = layers.length > 1;
    if (!simulcast) layers[0].layerId = streamId; // a plain stream: its own id on the wire
    const simulcastLayers = simulcast
      ? layers.map(({ layerId, width: w, height: h, maxBitrate }) => ({
          layerId,
          width: w,
          height: h,
          maxBitrate,
        }))
      : [];
    await this.announce(signaling, {
      streamId,
      streamType: StreamType.VIDEO_CAMERA,
      metadata: {
        codec: "VP8",
        maxBitrate: layers.reduce((sum, layer) => sum + layer.maxBitrate, 0),
        video: { width, height, framerate: VIDEO_FRAMERATE, simulcastLayers },
      },
    });
    for (const { layerId } of layers) {
      await media.publish(layerId, {
        onNeedKeyFrame: () => this.video?.requestKeyFrame(layerId),
        // A new media session: every layer runs until its MH says otherwise (dynacast).
        onReconnected: () => this.video?.resume(layerId),
        onError: (e) => onLoss("Video", e),
      });
      if (isEnded()) return;
    }
    this.videoId = streamId;
    const published = this.stats.publishedLayers;
    for (const { layerId } of layers) published[layerId] = { sent: 0, keyFramesSent: 0 };
    this.video = new SimulcastSender(
      videoTrack,
      layers,
      (layerId, type, payload, ts) => {
        if (!media.send(layerId, type, payload, ts)) return;
        this.stats.sent.video++;
        published[layerId].sent++;
        if (type === FrameType.VIDEO_KEY) published[layerId].keyFramesSent++;
      },
      { stats: published },
    );
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

  // A KeyFrameRequest for `streamId`: the next frame of that simulcast layer (of every layer for
  // the stream's own id) is a key frame.
  requestKeyFrame(streamId) {
    if (streamId === this.videoId) this.video?.requestKeyFrame();
    else if (this.video?.has(streamId)) this.video.requestKeyFrame(streamId);
  }

  // Whether `streamId` is one this page publishes (its quality updates are feedback to it).
  publishes(streamId) {
    return this.announced.has(streamId);
  }

  // A StreamQualityUpdate for a stream this page publishes (docs/protocol.md §17.3): the video's
  // layers paused, resumed and capped (simulcast.js).
  onQuality(update) {
    if (update.streamId === this.videoId) this.video?.onFeedback(update);
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
