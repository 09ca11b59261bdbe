// The signaling session with the Meeting Controller (docs/protocol.md §2): the first bidirectional
// stream of a WebTransport session carries length-delimited ClientMessage (out) and ServerMessage
// (in) envelopes. Requests carry a request id and settle on the reply with the same id; everything
// else is an event for `onEvent(kind, body, envelope)`.
//
// A JoinResponse whose participant list did not fit one message says how many ParticipantsBatch
// messages follow it (docs/protocol.md §4); the join request settles only once
// they are in, with the whole list in `joinResponse.existingParticipants`.

import { openWebTransport } from "./media.js";
import { ErrorCode, PROTOCOL_VERSION, encodeDelimited, kindOf, readMessages } from "./proto.js";

// What the page says it can receive, in every JoinRequest (a join, a resume, a rejoin). A
// session lists the video codecs this browser decodes instead (codecs.js's
// decodableVideoCodecs): the MC transcodes the others for it (docs/protocol.md §2.2).
export const CAPABILITIES = {
  videoCodecs: ["VP8", "VP9"],
  audioCodecs: ["Opus"],
  supportsSimulcast: true,
  maxVideoStreams: 16,
};
// A request not answered within this long fails (the session is still usable).
export const REQUEST_TIMEOUT_MS = 10_000;
// Pings keep the QUIC connection alive from the page's side too: browsers idle out after 30 s
// without traffic.
export const PING_INTERVAL_MS = 10_000;

// The bytes of the envelope `{[kind]: body}`: every ClientMessage the page sends is built here,
// stamped with the protocol version (docs/protocol.md §12).
export function encodeClientMessage(requestId, kind, body) {
  return encodeDelimited("ClientMessage", {
    requestId,
    protocolVersion: PROTOCOL_VERSION,
    [kind]: body,
  });
}

// Limit: requests awaiting a reply. Policy when full: request() throws at once; the page never
// has more than a few in flight, so reaching it means the MC stopped answering.
const MAX_PENDING_REQUESTS = 64;

// An ErrorMessage in reply to a request.
export class SignalingError extends Error {
  constructor(code, message, details = {}) {
    super(message);
    this.name = "SignalingError";
    this.code = code;
    this.details = details;
  }

  get codeName() {
    return Object.keys(ErrorCode).find((k) => ErrorCode[k] === this.code) ?? String(this.code);
  }
}

export class Signaling {
  // Use Signaling.open(). `onEvent(kind, body, envelope)` gets unsolicited messages;
  // `onClose({error, closeInfo})` is called once when the session ends, for any reason.
  constructor(wt, stream, { onEvent, onClose }) {
    this.wt = wt;
    this.writer = stream.writable.getWriter();
    this.onEvent = onEvent;
    this.onClose = onClose;
    this.nextRequestId = 1;
    this.pending = new Map(); // request id -> {resolve, reject, timer}
    this.assembling = null; // a JoinResponse waiting for its batches: {waiter, envelope, remaining}
    this.closedInfo = null;
    this.pinger = setInterval(() => this.ping(), PING_INTERVAL_MS);
    this.reading = this.readLoop(stream.readable);
  }

  // Opens the session at `url` (the meeting_controller_url) and its signaling stream; throws
  // when the session is not established within `timeoutMs` (null: the browser's own timeout).
  static async open(url, certHash, handlers, { timeoutMs = null } = {}) {
    const wt = await openWebTransport(url, certHash, { timeoutMs });
    try {
      const stream = await wt.createBidirectionalStream();
      return new Signaling(wt, stream, handlers);
    } catch (e) {
      wt.close();
      throw e;
    }
  }

  async readLoop(readable) {
    let error = null;
    try {
      for await (const envelope of readMessages(readable, "ServerMessage")) {
        this.dispatch(envelope);
      }
    } catch (e) {
      error = e;
    }
    let closeInfo = null;
    try {
      closeInfo = await this.wt.closed;
    } catch (e) {
      error = error ?? e;
    }
    this.finish(error, closeInfo);
  }

  dispatch(envelope) {
    const kind = kindOf(envelope, "ServerMessage");
    if (this.assembling) {
      this.assembleJoin(kind, envelope);
      return;
    }
    const id = envelope.requestId;
    const waiter = id ? this.pending.get(Number(id)) : undefined;
    if (waiter) {
      this.pending.delete(Number(id));
      clearTimeout(waiter.timer);
      if (kind === "error") {
        const e = envelope.error;
        waiter.reject(new SignalingError(e.code, e.message, e.details));
      } else if (kind === "joinResponse" && envelope.joinResponse.participantBatches > 0) {
        const remaining = envelope.joinResponse.participantBatches;
        this.assembling = { waiter, envelope, remaining };
        return;
      } else {
        waiter.resolve(envelope);
      }
      // The MC answers LeaveRequest with SessionEnded: the end of the session is an event too.
      if (kind !== "sessionEnded") return;
    }
    if (kind !== undefined) this.onEvent(kind, envelope[kind], envelope);
  }

  // The batches follow the JoinResponse with nothing in between; anything else there is a
  // protocol fault that fails the join.
  assembleJoin(kind, envelope) {
    const a = this.assembling;
    if (kind !== "participantsBatch") {
      this.assembling = null;
      a.waiter.reject(new Error(`unexpected ${kind} inside the participant list`));
      return;
    }
    const batch = envelope.participantsBatch;
    a.envelope.joinResponse.existingParticipants.push(...batch.participants);
    a.remaining -= 1;
    if (batch.final || a.remaining === 0) {
      this.assembling = null;
      a.waiter.resolve(a.envelope);
    }
  }

  finish(error, closeInfo) {
    if (this.closedInfo) return;
    clearInterval(this.pinger);
    this.closedInfo = { error, closeInfo };
    if (this.assembling) {
      this.assembling.waiter.reject(error ?? new Error("signaling session closed"));
      this.assembling = null;
    }
    for (const waiter of this.pending.values()) {
      clearTimeout(waiter.timer);
      waiter.reject(error ?? new Error("signaling session closed"));
    }
    this.pending.clear();
    this.onClose(this.closedInfo);
  }

  // Sends `{[kind]: body}` without expecting a reply.
  async send(kind, body) {
    await this.writer.write(encodeClientMessage(0, kind, body));
  }

  // Sends `{[kind]: body}` and resolves with the reply envelope; rejects with SignalingError for
  // an ErrorMessage reply, or an Error on timeout or when the session closes first.
  request(kind, body, timeoutMs = REQUEST_TIMEOUT_MS) {
    if (this.closedInfo) return Promise.reject(new Error("signaling session closed"));
    if (this.pending.size >= MAX_PENDING_REQUESTS) {
      return Promise.reject(new Error("too many signaling requests in flight"));
    }
    const requestId = this.nextRequestId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(requestId);
        reject(new Error(`no reply to ${kind} within ${timeoutMs} ms`));
      }, timeoutMs);
      this.pending.set(requestId, { resolve, reject, timer });
      const bytes = encodeClientMessage(requestId, kind, body);
      this.writer.write(bytes).catch((e) => {
        if (this.pending.delete(requestId)) {
          clearTimeout(timer);
          reject(e);
        }
      });
    });
  }

  ping() {
    const timestamp = Math.round((performance.timeOrigin + performance.now()) * 1000);
    this.request("ping", { timestamp }).then(
      (reply) => {
        const rtt = Date.now() * 1000 - Number(reply.pong?.timestamp ?? timestamp);
        this.lastRttMs = Math.max(0, Math.round(rtt / 1000));
      },
      () => {},
    );
  }

  close(closeCode = 0, reason = "") {
    clearInterval(this.pinger);
    try {
      this.wt.close({ closeCode, reason });
    } catch {
      // Already closed.
    }
  }
}

// A signaling session of a meeting session: the first, or one that resumes it (docs/protocol.md
// §13). Its events are held until goLive() (its JoinResponse is applied first, so that the events
// after it are relative to the participant list it carries), except SessionEnded, passed on at
// once; its end is reported only once live; a retired link (replaced or abandoned) reports
// nothing more.
export class SignalingLink {
  // Opens the Signaling at `url`; `onEvent(kind, body)` and `onClose(info)` as for Signaling.
  static async open(url, certHash, { onEvent, onClose }, { timeoutMs = null } = {}) {
    const link = new SignalingLink(onEvent, onClose);
    const handlers = {
      onEvent: (kind, body) => link.event(kind, body),
      onClose: (info) => {
        if (link.live && !link.retired) onClose(info);
      },
    };
    link.signaling = await Signaling.open(url, certHash, handlers, { timeoutMs });
    return link;
  }

  constructor(onEvent, onClose) {
    this.onEvent = onEvent;
    this.onClose = onClose;
    this.signaling = null;
    this.held = [];
    this.live = false;
    this.retired = false;
  }

  event(kind, body) {
    if (this.retired) return;
    if (this.live || kind === "sessionEnded") this.onEvent(kind, body);
    else this.held.push([kind, body]);
  }

  // `apply()`, then the events held since the link opened, then its end if it came already.
  goLive(apply) {
    apply();
    this.live = true;
    for (const [kind, body] of this.held.splice(0)) this.event(kind, body);
    if (this.signaling.closedInfo && !this.retired) this.onClose(this.signaling.closedInfo);
  }

  retire() {
    this.retired = true;
    this.signaling?.close();
  }
}
