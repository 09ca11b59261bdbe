// The person's own camera and microphone in a meeting session: captured once, published on the
// session's MediaLink (medialink.js). The camera is published as simulcast (simulcast.js: up to
// three layers, each its own stream id; one plain stream when the browser encodes only one),
// its encoders paused, resumed and capped by the MH's StreamQualityUpdate (docs/protocol.md
// §17.3); each audio frame carries its level (docs/protocol.md §17.1). `view.setPreview` shows
// what is captured and `view.notice` says when there is nothing to capture; `stats.sent` counts
// the frames sent, `stats.publishedLayers` each video layer's (layer id -> {width, height,
// maxBitrate, bitrate, paused, encoded, keyFrames, dropped, resumes, sent, keyFramesSent}).
//
// Mute and camera off (docs/protocol.md §18.1): the stream stays published and its encoder
// encodes nothing, so no frame is sent; on again, the video starts from a key frame. A stream
// the MC ends (a host's moderation, §18.2) is forgotten (dropped()) and published afresh when
// the person turns it on again. Another camera or microphone (switchDevice()) replaces the
// capture's track under the same publication. The screen share is screenshare.js's.

import { AudioSender, VIDEO_FRAMERATE } from "./codecs.js";
import { FrameType } from "./frames.js";
import { ErrorCode, StreamType } from "./proto.js";
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
    this.muted = { audio: false, video: false };
    this.denied = null; // the error of a refused capture (NotAllowedError), or null
    this.ctx = null; // publish()'s {signaling: () => Signaling, media, isEnded, onLoss}
    this.screen = null; // the screen share (screenshare.js), while sharing
  }

  // Camera and microphone (fake devices in tests). A person without them still joins, receive-only.
  // `preview`: what the pre-join screen captured already (prejoin.js), taken over as it is.
  async start(preview = undefined) {
    if (this.started) return this.stream;
    this.started = true;
    if (preview !== undefined) {
      this.stream = preview;
    } else {
      try {
        this.stream = await navigator.mediaDevices.getUserMedia(captureConstraints());
      } catch (e) {
        if (e?.name === "NotAllowedError") this.denied = e;
        this.view.notice(`No camera or microphone (${e.message}): joining without them`);
        this.stream = null;
      }
    }
    this.applyMuted();
    this.view.setPreview(this.stream);
    return this.stream;
  }

  // Announces each track to the MC (`signaling`, PublishStream), opens its stream on `media` and
  // starts its encoder. Each await may see the session end (`isEnded()`: kick, close): nothing is
  // started after that. `onLoss(what, error)` is told when a publish stream fails.
  // `signaling` is a function returning the session's current Signaling. A kind the host
  // blocks (FORBIDDEN, docs/protocol.md §18.1) is not published, and the join goes on.
  async publish(signaling, media, { isEnded, onLoss }) {
    this.ctx = { signaling, media, isEnded, onLoss };
    if (!this.stream) return;
    await this.publishKind("video");
    if (!isEnded()) await this.publishKind("audio");
  }

  // Publishes the own `kind` ("audio" | "video") if it has a track and no stream.
  async publishKind(kind) {
    const track = this.track(kind);
    if (!this.ctx || !track || (kind === "audio" ? this.audio : this.video)) return;
    try {
      if (kind === "video") await this.publishVideo(track, this.ctx);
      else await this.publishAudio(track, this.ctx);
    } catch (e) {
      if (e?.code !== ErrorCode.FORBIDDEN) throw e;
      this.view.notice(`The host does not allow your ${kind === "audio" ? "microphone" : "camera"}`);
    }
  }

  async publishAudio(audioTrack, { signaling, media, isEnded, onLoss }) {
    const streamId = crypto.randomUUID();
    await this.announce(signaling(), {
      streamId,
      streamType: StreamType.AUDIO,
      metadata: { codec: "Opus", maxBitrate: 64_000 },
    });
    await media.publish(streamId, {
      onError: (e) => onLoss("Audio", e, () => this.audioId === streamId),
    });
    if (isEnded()) return;
    this.audioId = streamId;
    this.audio = new AudioSender(audioTrack, (type, payload, ts, level) => {
      if (media.send(streamId, type, payload, ts, level)) this.stats.sent.audio++;
    });
    this.audio.setMuted(this.muted.audio);
  }

  // The camera: PublishStream with its simulcast layers (docs/protocol.md §7), a publish stream
  // per layer, then the encoders.
  async publishVideo(videoTrack, { signaling, media, isEnded, onLoss }) {
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
    await this.announce(signaling(), {
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
        onError: (e) => onLoss("Video", e, () => this.videoId === streamId),
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
    this.video.setMuted(this.muted.video);
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
    if (streamId === this.screen?.streamId) this.screen.requestKeyFrame();
    else if (streamId === this.videoId) this.video?.requestKeyFrame();
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

  // The own track of `kind` ("audio" | "video"), or undefined.
  track(kind) {
    if (!this.stream) return undefined;
    return kind === "audio" ? this.stream.getAudioTracks()[0] : this.stream.getVideoTracks()[0];
  }

  // The microphone muted or the camera turned off (`kind` "audio" | "video"): its encoder
  // encodes nothing (and the track is disabled: the preview goes dark); on again, a stream the
  // MC ended meanwhile is published afresh.
  async setMuted(kind, muted) {
    this.muted[kind] = muted;
    this.applyMuted();
    if (!muted) await this.publishKind(kind);
  }

  applyMuted() {
    const audio = this.track("audio");
    const video = this.track("video");
    if (audio) audio.enabled = !this.muted.audio;
    if (video) video.enabled = !this.muted.video;
    this.audio?.setMuted(this.muted.audio);
    this.video?.setMuted(this.muted.video);
  }

  // The MC ended an own stream (StreamUnpublished: a host's moderation, docs/protocol.md
  // §18.2): its encoder stops and it is forgotten; turned on again, it is published afresh.
  dropped(streamId) {
    if (!this.announced.delete(streamId)) return;
    if (streamId === this.audioId) {
      this.audio?.stop();
      this.audio = this.audioId = null;
    } else if (streamId === this.videoId) {
      this.video?.stop();
      for (const layerId of this.video?.layers.keys() ?? []) this.ctx?.media.unpublish(layerId);
      this.video = this.videoId = null;
    } else if (streamId === this.screen?.streamId) {
      this.screen.ended();
    }
    this.ctx?.media.unpublish(streamId);
  }

  // Another camera or microphone (`kind`, a deviceId from enumerateDevices): its track replaces
  // the captured one under the same publication (the encoder reads the new track).
  async switchDevice(kind, deviceId) {
    const constraints = captureConstraints({ [kind]: deviceId });
    const other = kind === "audio" ? "video" : "audio";
    constraints[other] = false;
    const fresh = await navigator.mediaDevices.getUserMedia(constraints);
    const [track] = kind === "audio" ? fresh.getAudioTracks() : fresh.getVideoTracks();
    const old = this.track(kind);
    this.stream ??= new MediaStream();
    if (old) {
      this.stream.removeTrack(old);
      old.stop();
    }
    this.stream.addTrack(track);
    this.applyMuted();
    const sender = kind === "audio" ? this.audio : this.video;
    if (sender) sender.replaceTrack(track);
    else await this.publishKind(kind);
    this.view.setPreview(this.stream);
    return track.getSettings().deviceId ?? deviceId;
  }

  // The deviceId of the captured `kind`, or "".
  deviceId(kind) {
    return this.track(kind)?.getSettings().deviceId ?? "";
  }

  // The encoders stop.
  stopEncoders() {
    this.video?.stop();
    this.audio?.stop();
    this.screen?.ended();
  }

  // The camera and microphone are released and the preview cleared.
  release() {
    for (const track of this.stream?.getTracks() ?? []) track.stop();
    this.view.setPreview(null);
  }
}

// getUserMedia's constraints: the camera at 640×480, a device each when given
// ({audio, video}: deviceIds).
export function captureConstraints({ audio = "", video = "" } = {}) {
  const camera = { width: 640, height: 480, frameRate: VIDEO_FRAMERATE };
  return {
    video: video ? { ...camera, deviceId: { exact: video } } : camera,
    audio: audio ? { deviceId: { exact: audio } } : true,
  };
}
