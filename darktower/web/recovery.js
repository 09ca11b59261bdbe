// Getting a meeting session back when a connection is lost (docs/protocol.md §13), for
// session.js: a Recovery owns the session's resume, its media reconnections and its rejoin
// through the GC, and reads and updates the session it is given.
//
// Resume: a signaling session lost without SessionEnded is resumed (state "reconnecting"): new
// sessions with JoinRequest{meeting_id, resume_token}, backing off with jitter (retry.js), until
// one is answered with `resumed`; the participant, its tiles and its streams stay, the
// participant list is reconciled with the MC's, and media reconnects with the fresh connection
// token. A media session lost alone is reconnected with the token of a MediaReconnect (asked for
// with MediaReconnectRequest, or sent by the MC unprompted).
//
// Rejoin: when resuming cannot succeed — the MC says SERVER_SHUTDOWN (or the MH's close code
// does), refuses the resume token (NOT_FOUND: it restarted), the GC places the meeting at another
// MC or reports its MC lost (asked after each failed resume attempt), or the reconnect window
// passed — the page joins the meeting again through the GC's REST API, with the same name and
// access token, as a new participant, in state "reconnecting" ("Reconnecting…"), backing off with
// jitter within REJOIN_WINDOW_MS: its streams are published again with their stream ids, media
// goes to the new MH, the others' tiles follow the new room, and every stream in it is
// subscribed to. A GC that refuses for good ends the session with a reason that says so.

import * as api from "./api.js";
import { ErrorCode, LeaveReason } from "./proto.js";
import {
  RECONNECT_ATTEMPT_TIMEOUT_MS,
  REJOIN_WINDOW_MS,
  STREAM_LOSS_GRACE_MS,
  backoffDelayMs,
  sleep,
} from "./retry.js";
import { SignalingError } from "./signaling.js";

// The GC's refusals of a rejoin that no retry changes (HTTP status -> the reason the session ends
// with; null: the reason it was rejoining for). Anything else (503 while the GC places the
// meeting again, 429, no answer) is tried again within the window.
const REJOIN_REFUSALS = Object.freeze({
  400: null,
  401: null,
  403: LeaveReason.KICKED,
  404: null,
  409: LeaveReason.MEETING_ENDED,
});

export class Recovery {
  constructor(session) {
    this.session = session;
    this.mediaRecovery = 0; // each media reconnection supersedes the one before
    this.mediaReconnecting = false;
    this.rejoining = false; // a rejoin through the GC is under way
    this.unanswered = ""; // the URL of an MC that did not answer, not yet named to the GC
  }

  // The signaling session was lost: new sessions presenting the resume token, backing off with
  // jitter, until one resumes, the MC refuses (the session ends with its reason) or the window
  // closes (CONNECTION_LOST).
  async resume() {
    const s = this.session;
    s.setState("reconnecting");
    s.link.retire();
    const deadline = performance.now() + s.reconnectWindowMs;
    const resuming = () => s.state === "reconnecting" && !this.rejoining;
    let failure = "";
    for (let attempt = 0; resuming(); attempt++) {
      await sleep(backoffDelayMs(attempt));
      if (!resuming()) return;
      if (attempt > 0 && (await this.meetingMoved())) return;
      if (!resuming()) return;
      if (performance.now() > deadline) break;
      let link = null;
      const attempted = s.signalingUrl; // the MC this attempt dials
      try {
        link = await s.openSignaling(RECONNECT_ATTEMPT_TIMEOUT_MS);
        const reply = await link.signaling.request(
          "join",
          {
            meetingId: s.meetingId,
            resumeToken: s.resumeToken,
            participantName: s.name,
            capabilities: s.capabilities,
            e2eePublicKey: s.e2ee.publicKey, // a resume keeps the key pair
          },
          RECONNECT_ATTEMPT_TIMEOUT_MS,
        );
        if (!resuming()) {
          link.retire();
          return;
        }
        this.resumed(link, reply.joinResponse);
        return;
      } catch (e) {
        if (link) link.retire();
        failure = e.message;
        if (e instanceof SignalingError && e.code === ErrorCode.NOT_FOUND) {
          // The MC does not know the token: it restarted, or the grace passed. Join again.
          this.rejoin(LeaveReason.CONNECTION_LOST, "this session has expired");
          return;
        }
        if (e instanceof SignalingError) {
          // Refused: a kick or the meeting's end says why in the SessionEnded that follows.
          await Promise.race([sleep(STREAM_LOSS_GRACE_MS), s.endedPromise]);
          s.end(LeaveReason.CONNECTION_LOST, e.message);
          return;
        }
        if (resuming()) this.unanswered = attempted; // no answer: the next lookup names it
      }
    }
    if (resuming()) this.rejoin(LeaveReason.CONNECTION_LOST, failure || "could not reconnect");
  }

  // After a failed resume attempt: whether the GC has the meeting elsewhere (another MC, or its
  // MC lost), and the page rejoins it there; it ends the session when the GC says it has ended.
  // A GC that cannot say (no answer) leaves the resume going.
  async meetingMoved() {
    const s = this.session;
    let info;
    try {
      const timeoutMs = RECONNECT_ATTEMPT_TIMEOUT_MS;
      // The resume attempt just failed: name the MC that did not answer, so that the GC
      // checks it now rather than after its heartbeat timeout (docs/protocol.md §14).
      const unreachableController = this.unanswered;
      info = await api.getMeeting(s.meetingId, null, { timeoutMs, unreachableController });
      // The GC has heard it and judged (unless another MC went unanswered meanwhile).
      if (this.unanswered === unreachableController) this.unanswered = "";
    } catch {
      return false;
    }
    if (s.state !== "reconnecting" || this.rejoining) return true;
    if (info?.status === "ended") {
      s.end(LeaveReason.MEETING_ENDED, "the meeting has ended");
      return true;
    }
    const url = info?.meeting_controller_url;
    if (info?.status !== "controller_lost" && (!url || url === s.signalingUrl)) return false;
    this.rejoin(LeaveReason.CONNECTION_LOST, "the meeting controller is gone");
    return true;
  }

  // Joins the meeting again through the GC as a new participant (see the top of this file):
  // attempts back off with jitter within REJOIN_WINDOW_MS; `reason` and `detail` say why (the end
  // reason if no attempt succeeds). Idempotent while one is under way.
  async rejoin(reason, detail) {
    const s = this.session;
    if (s.state === "ended" || this.rejoining) return;
    this.rejoining = true;
    this.mediaRecovery++; // a media reconnection under way stops: the rejoin brings media
    this.mediaReconnecting = false;
    s.setState("reconnecting");
    s.link?.retire();
    // The old MH is removing this participant, or is gone: stop sending there and close its
    // session now (the rejoin brings a new one). Publish streams written to while the MH resets
    // them and closes the session have made Chromium kill the page.
    s.media.drop();
    const deadline = performance.now() + REJOIN_WINDOW_MS;
    const timeoutMs = RECONNECT_ATTEMPT_TIMEOUT_MS;
    let failure = "no attempt in time";
    for (let attempt = 0; s.state === "reconnecting"; attempt++) {
      if (attempt > 0) await sleep(backoffDelayMs(attempt - 1));
      if (s.state !== "reconnecting") return;
      if (performance.now() > deadline) break;
      let link = null;
      let named = null; // the MC of this attempt's ticket
      try {
        const unreachableController = this.unanswered;
        const ticket = await api.joinMeeting(s.meetingId, s.name, s.accessToken, {
          timeoutMs,
          unreachableController,
        });
        if (this.unanswered === unreachableController) this.unanswered = "";
        if (s.state !== "reconnecting") return;
        s.signalingUrl = named = ticket.meeting_controller_url;
        await s.e2ee.newKeyPair(); // a new participant: a new key pair
        link = await s.openSignaling(timeoutMs);
        const join = {
          meetingId: s.meetingId,
          joinToken: ticket.join_token,
          participantName: s.name,
          capabilities: s.capabilities,
          e2eePublicKey: s.e2ee.publicKey,
        };
        const reply = await link.signaling.request("join", join, timeoutMs);
        if (s.state !== "reconnecting") {
          link.retire();
          return;
        }
        await this.rejoined(link, reply.joinResponse, ticket);
        return;
      } catch (e) {
        if (link) link.retire();
        if (e instanceof api.ApiError && e.status in REJOIN_REFUSALS) {
          const refused = "the Global Controller refused to rejoin the meeting";
          s.end(REJOIN_REFUSALS[e.status] ?? reason, `${refused} (${e.code}): ${e.message}`);
          return;
        }
        // The MC the GC named did not answer: the next join names it (a refusal is an answer).
        if (named && !(e instanceof SignalingError)) this.unanswered = named;
        failure = e.message;
      }
    }
    s.end(reason, `${detail}; not rejoined in time (${failure})`);
  }

  // Joined at the MC the GC named (`ticket`): a new participant id, the room as that MC has it,
  // the streams published again, media at its MH.
  async rejoined(link, joined, ticket) {
    const s = this.session;
    if (!joined) throw new Error("the meeting controller did not answer with JoinResponse");
    if (s.refusesDowngrade(joined, link)) return;
    const old = s.participantId;
    s.participantId = s.roster.selfId = joined.participantId;
    s.role = api.jwtPayload(ticket.join_token).role ?? ticket.role ?? s.role;
    s.roster.kickable = s.role === "host";
    s.resumeToken = joined.resumeToken || null;
    s.recording = Boolean(joined.recording);
    s.view.renameTile?.(old, s.participantId);
    s.goLive(link, () => {
      s.startEncryption(joined);
      s.roster.reconcile(joined.existingParticipants);
    });
    if (s.state !== "reconnecting") return;
    s.roster.subscribeMix(); // a new MC: the mix is asked for again (if the page takes it)
    await s.local.republish(link.signaling);
    await s.e2ee.ready;
    let media = true;
    try {
      await s.media.connect(joined.mediaServer);
    } catch {
      media = false; // the MC gives another token: recoverMedia below
    }
    if (s.state !== "reconnecting") return;
    this.rejoining = false;
    s.stats.rejoins++;
    s.setState("joined");
    if (!media) this.recoverMedia(null);
  }

  // The MC answered the resume: same participant, the room as it is now, a fresh media token.
  resumed(link, joined) {
    const s = this.session;
    if (!joined?.resumed || joined.participantId !== s.participantId) {
      link.retire();
      s.end(LeaveReason.CONNECTION_LOST, "the meeting controller did not resume the session");
      return;
    }
    if (s.refusesDowngrade(joined, link)) return;
    s.resumeToken = joined.resumeToken || null;
    s.recording = Boolean(joined.recording);
    s.stats.reconnects.signaling++;
    // Joined again before the events held since the JoinResponse (and the new session's end,
    // if it came already: that is a new loss, resumed in turn).
    s.goLive(link, () => {
      s.roster.reconcile(joined.existingParticipants);
      s.e2ee.resumed(joined.existingParticipants);
      s.setState("joined");
    });
    if (s.state === "joined") this.recoverMedia(joined.mediaServer);
  }

  // Reconnects media with `server`'s token, or with one asked of the MC (MediaReconnectRequest)
  // when `server` is null or its token fails; backs off between attempts. A newer call, a lost
  // signaling session (its resume brings a token) or the end of the session stops it.
  async recoverMedia(server) {
    const s = this.session;
    if (s.state !== "joined") return;
    const recovery = ++this.mediaRecovery;
    this.mediaReconnecting = true;
    s.view.update(s);
    const deadline = performance.now() + s.reconnectWindowMs;
    const current = () => recovery === this.mediaRecovery && s.state === "joined";
    for (let attempt = 0; current(); attempt++) {
      if (attempt > 0) await sleep(backoffDelayMs(attempt - 1));
      if (!current()) return;
      if (performance.now() > deadline) break;
      try {
        if (!server) {
          const reply = await s.signaling.request("mediaReconnectRequest", {});
          server = reply.mediaReconnect?.mediaServer;
          if (!current()) return;
        }
        await s.media.connect(server);
        if (!current()) return;
        s.roster.resync();
        this.mediaReconnecting = false;
        s.stats.reconnects.media++;
        s.view.update(s);
        return;
      } catch {
        server = null; // the next attempt asks for a fresh token
      }
    }
    if (recovery !== this.mediaRecovery || s.state !== "joined") return;
    this.mediaReconnecting = false;
    s.view.update(s);
    s.view.notice("Media connection lost");
  }
}
