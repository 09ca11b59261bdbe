// REST calls to the Global Controller (docs/protocol.md §1), same origin as the page.
//
// Errors: a non-2xx reply throws ApiError with the contract's error code ("MEETING_NOT_FOUND",
// "UNAUTHORIZED", ...) and message from the body {"error": {code, message, details}}.

export class ApiError extends Error {
  constructor(status, code, message, details = {}) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
    this.details = details;
  }
}

// The GC's origin; "" means the page's own (the GC serves the page).
let apiBase = "";

export function setApiBase(base) {
  apiBase = base.replace(/\/$/, "");
}

// `timeoutMs` (null: the browser's own) bounds the whole request: it then throws a TimeoutError.
async function call(method, path, { body, accessToken, timeoutMs = null } = {}) {
  const headers = { accept: "application/json" };
  if (body !== undefined) headers["content-type"] = "application/json";
  if (accessToken) headers.authorization = `Bearer ${accessToken}`;
  const response = await fetch(apiBase + path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    signal: timeoutMs === null ? undefined : AbortSignal.timeout(timeoutMs),
  });
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!response.ok) {
    const err = data?.error ?? {};
    throw new ApiError(
      response.status,
      err.code ?? `HTTP_${response.status}`,
      err.message ?? `${method} ${path} failed with HTTP ${response.status}`,
      err.details ?? {},
    );
  }
  return data;
}

// --- development-only ---------------------------------------------------------------------------
// `python -m darktower` (the dev stack) exposes the development client credential so that a
// person can create a meeting from the page without configuring anything. A production GC does
// not serve this route: the page then needs an access token from elsewhere (pass it to
// createMeeting) and can still join meetings, which needs no credential.
export const DEV_CREDENTIALS_PATH = "/api/v1/dev/credentials";
// The dev stack's self-signed certificate (docs/decisions.md, "Development-only GC routes"): the
// page pins it for WebTransport with serverCertificateHashes. Returns null where the route does not
// exist (a real certificate).
export const DEV_CERTIFICATE_PATH = "/api/v1/dev/certificate";

// {client_id, client_secret} of the dev stack's development client.
export async function devCredentials() {
  return call("GET", DEV_CREDENTIALS_PATH);
}

// The access token of the dev credential: the whole dev-only path in one call.
export async function devAccessToken() {
  const { client_id: clientId, client_secret: clientSecret } = await devCredentials();
  return (await authenticate(clientId, clientSecret)).access_token;
}

// The SHA-256 of the servers' certificate as bytes, or null when none is published (the servers
// then have a certificate the browser trusts on its own).
export async function certificateHash() {
  let data;
  try {
    data = await call("GET", DEV_CERTIFICATE_PATH);
  } catch (e) {
    if (e instanceof ApiError && e.status === 404) return null;
    throw e;
  }
  const hex = String(data?.sha256 ?? "").replaceAll(":", "");
  if (!/^[0-9a-fA-F]{64}$/.test(hex)) throw new Error(`bad certificate hash: ${data?.sha256}`);
  return Uint8Array.from(hex.match(/../g), (h) => Number.parseInt(h, 16));
}

// --- contract -----------------------------------------------------------------------------------

// docs/protocol.md §1.1 (POST /api/v1/auth/token): client credentials -> {access_token, token_type, expires_in}.
export async function authenticate(clientId, clientSecret) {
  return call("POST", "/api/v1/auth/token", {
    body: { grant_type: "client_credentials", client_id: clientId, client_secret: clientSecret },
  });
}

// docs/protocol.md §1.1 (POST /api/v1/meetings) -> {meeting_id, meeting_url, join_token, meeting_controller_url, created_at}.
export async function createMeeting(accessToken, displayName, settings = {}) {
  return call("POST", "/api/v1/meetings", {
    accessToken,
    body: {
      display_name: displayName,
      max_participants: settings.maxParticipants ?? 100,
      settings: {
        enable_e2e_encryption: settings.enableE2eEncryption ?? false,
        require_auth: settings.requireAuth ?? false,
        recording_enabled: settings.recordingEnabled ?? false,
      },
    },
  });
}

// docs/protocol.md §1.1 (GET /api/v1/meetings/{id}). `unreachableController` (an addition,
// docs/protocol.md §14): the signaling URL of an MC this page could not reach; the GC checks it.
export async function getMeeting(
  meetingId,
  accessToken,
  { timeoutMs = null, unreachableController = "" } = {},
) {
  const hint = unreachableController
    ? `?unreachable_controller=${encodeURIComponent(unreachableController)}`
    : "";
  return call("GET", `/api/v1/meetings/${encodeURIComponent(meetingId)}${hint}`, {
    accessToken,
    timeoutMs,
  });
}

// -> {meeting_id, join_token, role, meeting_controller_url}. With the owner's access token the
// join token is a host's; without one, a guest's.
// `unreachableController`: as for getMeeting.
export async function joinMeeting(
  meetingId,
  participantName,
  accessToken,
  { timeoutMs = null, unreachableController = "" } = {},
) {
  const body = participantName ? { participant_name: participantName } : {};
  if (unreachableController) body.unreachable_controller = unreachableController;
  return call("POST", `/api/v1/meetings/${encodeURIComponent(meetingId)}/join`, {
    accessToken,
    timeoutMs,
    body,
  });
}

// The payload of a JWT, decoded without verifying it: the page only reads `role` from its own
// join token to decide whether to show host controls (the MC enforces the role).
export function jwtPayload(token) {
  const part = String(token).split(".")[1];
  if (!part) throw new Error("not a JWT");
  const b64 = part.replaceAll("-", "+").replaceAll("_", "/");
  const padded = b64 + "=".repeat((4 - (b64.length % 4)) % 4);
  const bytes = Uint8Array.from(atob(padded), (c) => c.charCodeAt(0));
  return JSON.parse(new TextDecoder().decode(bytes));
}
