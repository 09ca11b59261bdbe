// The pre-join screen (the lobby, `#lobby`): the camera's preview (`#preview`), the camera and
// microphone pickers (devices.js), the name and the meeting. What it captured is handed to the
// session on join (take()), so the person is seen as previewed and asked only once. A refused
// capture (NotAllowedError) shows `#denied`: how to allow it, "Try again", or joining without
// camera and microphone. `#prejoin-mic` and `#prejoin-camera` (aria-pressed) join with the
// microphone muted or the camera off (`off`).

import { fillPicker } from "./devices.js";
import { captureConstraints } from "./localmedia.js";

const $ = (id) => document.getElementById(id);

export class Prejoin {
  constructor() {
    this.stream = null;
    this.error = null; // the last capture's error, or null
    this.pending = null; // the capture under way (a promise)
    this.taken = false;
    this.off = { audio: false, video: false }; // join muted / with the camera off
  }

  // Wires the pickers and starts the preview.
  init() {
    $("camera-select").addEventListener("change", () => this.capture());
    $("mic-select").addEventListener("change", () => this.capture());
    $("retry-devices").addEventListener("click", () => this.capture());
    $("skip-devices").addEventListener("click", () => {
      $("denied").hidden = true;
    });
    $("prejoin-mic").addEventListener("click", () => this.toggle("audio"));
    $("prejoin-camera").addEventListener("click", () => this.toggle("video"));
    return this.capture();
  }

  // The microphone ("audio") or camera ("video") on or off for the join.
  toggle(kind) {
    this.off[kind] = !this.off[kind];
    this.applyOff();
  }

  applyOff() {
    for (const [kind, id] of [["audio", "prejoin-mic"], ["video", "prejoin-camera"]]) {
      const off = this.off[kind];
      $(id).setAttribute("aria-pressed", off ? "true" : "false");
      const tracks = kind === "audio" ? this.stream?.getAudioTracks() : this.stream?.getVideoTracks();
      for (const track of tracks ?? []) track.enabled = !off;
    }
  }

  get denied() {
    return this.error?.name === "NotAllowedError";
  }

  // (Re)captures the preview with the devices picked.
  capture() {
    const previous = this.pending ?? Promise.resolve();
    this.pending = previous.then(() => this.captureNow());
    return this.pending;
  }

  async captureNow() {
    if (this.taken) return;
    this.release();
    const video = $("camera-select").value;
    const audio = $("mic-select").value;
    try {
      this.stream = await navigator.mediaDevices.getUserMedia(captureConstraints({ audio, video }));
      this.error = null;
    } catch (e) {
      this.error = e;
      this.stream = null;
    }
    if (this.taken) {
      this.release(); // joined while capturing: the session captured its own
      return;
    }
    this.applyOff();
    $("preview").srcObject = this.stream;
    $("denied").hidden = !this.denied;
    $("preview-box").classList.toggle("empty", !this.stream);
    const track = (kind) => this.stream?.[kind === "video" ? "getVideoTracks" : "getAudioTracks"]()[0];
    await Promise.all([
      fillPicker($("camera-select"), "video", track("video")?.getSettings().deviceId ?? video),
      fillPicker($("mic-select"), "audio", track("audio")?.getSettings().deviceId ?? audio),
    ]).catch(() => {});
  }

  // What the session takes over on join: the preview's stream (null: none, join without).
  async take() {
    await this.pending;
    this.taken = true;
    const stream = this.stream;
    this.stream = null;
    $("preview").srcObject = null;
    return stream;
  }

  release() {
    for (const track of this.stream?.getTracks() ?? []) track.stop();
    this.stream = null;
  }
}
