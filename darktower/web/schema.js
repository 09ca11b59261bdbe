// The signaling messages the page uses, as field tables for proto.js: field numbers, JSON names
// and types exactly as in proto/darktower/v1/common.proto and signaling.proto (a browser test
// checks every message against the generated Python classes, byte for byte).

export const StreamType = Object.freeze({ AUDIO: 0, VIDEO_CAMERA: 1, VIDEO_SCREEN: 2 });
export const LeaveReason = Object.freeze({
  VOLUNTARY: 0,
  KICKED: 1,
  CONNECTION_LOST: 2,
  MEETING_ENDED: 3,
  SERVER_SHUTDOWN: 4, // an addition: the MC is shutting down, the meeting goes on (rejoin)
});
export const ConnectionState = Object.freeze({ CONNECTED: 0, RECONNECTING: 1 });
export const ErrorCode = Object.freeze({
  UNKNOWN: 0,
  INVALID_REQUEST: 1,
  UNAUTHORIZED: 2,
  FORBIDDEN: 3,
  NOT_FOUND: 4,
  CONFLICT: 5,
  INTERNAL_ERROR: 6,
  CAPACITY_EXCEEDED: 7,
  STREAM_ERROR: 8,
  RATE_LIMITED: 9,
});

// Field tables: [number, JSON name, type, mode]. Type is a scalar name or a message name in
// SCHEMA; mode is "repeated", "oneof" or absent. Kept in field-number order.
export const SCHEMA = {
  ErrorMessage: [
    [1, "code", "enum"],
    [2, "message", "string"],
    [3, "details", "map"],
  ],
  MediaStream: [
    [1, "streamId", "string"],
    [2, "streamType", "enum"],
    [3, "metadata", "StreamMetadata"],
  ],
  StreamMetadata: [
    [1, "codec", "string"],
    [2, "maxBitrate", "uint32"],
    [3, "video", "VideoMetadata"],
  ],
  VideoMetadata: [
    [1, "width", "uint32"],
    [2, "height", "uint32"],
    [3, "framerate", "uint32"],
    [4, "simulcastLayers", "SimulcastLayer", "repeated"],
  ],
  SimulcastLayer: [
    [1, "layerId", "string"],
    [2, "width", "uint32"],
    [3, "height", "uint32"],
    [4, "maxBitrate", "uint32"],
  ],
  KeyFrameRequest: [[1, "streamId", "string"]],
  ClientMessage: [
    [1, "requestId", "uint64"],
    [2, "join", "JoinRequest", "oneof"],
    [3, "publish", "PublishStream", "oneof"],
    [4, "unpublish", "UnpublishStream", "oneof"],
    [5, "subscribe", "SubscribeStream", "oneof"],
    [6, "unsubscribe", "UnsubscribeStream", "oneof"],
    [7, "quality", "StreamQualityUpdate", "oneof"],
    [8, "leave", "LeaveRequest", "oneof"],
    [9, "kick", "KickParticipant", "oneof"],
    [10, "endMeeting", "EndMeeting", "oneof"],
    [11, "ping", "Ping", "oneof"],
    [12, "keyShare", "E2EEKeyShare", "oneof"],
    [15, "protocolVersion", "uint32"],
    [16, "mediaReconnectRequest", "MediaReconnectRequest", "oneof"],
  ],
  ServerMessage: [
    [1, "requestId", "uint64"],
    [2, "joinResponse", "JoinResponse", "oneof"],
    [3, "participantJoined", "ParticipantJoined", "oneof"],
    [4, "participantLeft", "ParticipantLeft", "oneof"],
    [5, "streamPublished", "StreamPublished", "oneof"],
    [6, "streamUnpublished", "StreamUnpublished", "oneof"],
    [7, "ack", "Ack", "oneof"],
    [8, "quality", "StreamQualityUpdate", "oneof"],
    [9, "keyFrameRequest", "KeyFrameRequest", "oneof"],
    [10, "pong", "Pong", "oneof"],
    [11, "error", "ErrorMessage", "oneof"],
    [12, "keyShare", "E2EEKeyShare", "oneof"],
    [13, "sessionEnded", "SessionEnded", "oneof"],
    [14, "participantsBatch", "ParticipantsBatch", "oneof"],
    [15, "protocolVersion", "uint32"],
    [16, "participantUpdated", "ParticipantUpdated", "oneof"],
    [17, "mediaReconnect", "MediaReconnect", "oneof"],
    [18, "recordingStatus", "RecordingStatus", "oneof"],
    [19, "subscriptionUpdated", "SubscriptionUpdated", "oneof"],
    [20, "activeSpeakers", "ActiveSpeakers", "oneof"],
  ],
  JoinRequest: [
    [1, "meetingId", "string"],
    [2, "joinToken", "string"],
    [3, "participantName", "string"],
    [4, "capabilities", "ParticipantCapabilities"],
    [5, "e2eePublicKey", "bytes"],
    [6, "resumeToken", "string"],
  ],
  ParticipantCapabilities: [
    [1, "videoCodecs", "string", "repeated"],
    [2, "audioCodecs", "string", "repeated"],
    [3, "supportsSimulcast", "bool"],
    [4, "maxVideoStreams", "uint32"],
  ],
  JoinResponse: [
    [1, "participantId", "string"],
    [2, "existingParticipants", "Participant", "repeated"],
    [3, "mediaServer", "MediaServerInfo"],
    [4, "encryptionKeys", "EncryptionKeys"],
    [5, "participantBatches", "uint32"],
    [6, "resumeToken", "string"],
    [7, "resumed", "bool"],
    [8, "recording", "bool"],
  ],
  ParticipantsBatch: [
    [1, "participants", "Participant", "repeated"],
    [2, "final", "bool"],
  ],
  Participant: [
    [1, "participantId", "string"],
    [2, "name", "string"],
    [3, "streams", "MediaStream", "repeated"],
    [4, "joinedAt", "uint64"],
    [5, "publicKey", "bytes"],
    [6, "keyId", "string"],
  ],
  MediaServerInfo: [
    [1, "mediaHandlerUrl", "string"],
    [2, "connectionToken", "string"],
  ],
  ParticipantUpdated: [
    [1, "participantId", "string"],
    [2, "connection", "enum"],
  ],
  MediaReconnectRequest: [],
  MediaReconnect: [[1, "mediaServer", "MediaServerInfo"]],
  EncryptionKeys: [
    [1, "publicKey", "bytes"],
    [2, "keyId", "string"],
  ],
  ParticipantJoined: [[1, "participant", "Participant"]],
  ParticipantLeft: [
    [1, "participantId", "string"],
    [2, "reason", "enum"],
  ],
  PublishStream: [
    [1, "streamId", "string"],
    [2, "streamType", "enum"],
    [3, "metadata", "StreamMetadata"],
  ],
  StreamPublished: [
    [1, "participantId", "string"],
    [2, "stream", "MediaStream"],
  ],
  SubscribeStream: [
    [1, "streamId", "string"],
    [2, "options", "SubscriptionOptions"],
    [3, "mixAudio", "bool"],
  ],
  SubscriptionOptions: [
    [1, "preferredLayer", "string"],
    [2, "maxBitrate", "uint32"],
    [3, "pinned", "bool"],
  ],
  UnsubscribeStream: [[1, "streamId", "string"]],
  StreamQualityUpdate: [
    [1, "streamId", "string"],
    [2, "availableBitrate", "uint32"],
    [3, "packetLoss", "float"],
    [4, "rttMs", "uint32"],
    [5, "layerId", "string"],
    [6, "layers", "LayerFeedback", "repeated"],
    [7, "paused", "bool"],
  ],
  LayerFeedback: [
    [1, "layerId", "string"],
    [2, "active", "bool"],
    [3, "subscribers", "uint32"],
    [4, "availableBitrate", "uint32"],
  ],
  ActiveSpeakers: [[1, "participantIds", "string", "repeated"]],
  UnpublishStream: [[1, "streamId", "string"]],
  StreamUnpublished: [
    [1, "participantId", "string"],
    [2, "streamId", "string"],
  ],
  LeaveRequest: [],
  KickParticipant: [[1, "participantId", "string"]],
  EndMeeting: [],
  Ping: [[1, "timestamp", "uint64"]],
  Pong: [[1, "timestamp", "uint64"]],
  Ack: [
    [1, "streamId", "string"],
    [2, "derived", "DerivedStream"],
  ],
  DerivedStream: [
    [1, "streamId", "string"],
    [2, "codec", "string"],
    [3, "bitrate", "uint32"],
    [4, "mix", "bool"],
  ],
  RecordingStatus: [[1, "recording", "bool"]],
  SubscriptionUpdated: [
    [1, "streamId", "string"],
    [2, "derived", "DerivedStream"],
  ],
  SessionEnded: [
    [1, "reason", "enum"],
    [2, "message", "string"],
  ],
  E2EEKeyShare: [
    [1, "fromParticipantId", "string"],
    [2, "toParticipantId", "string"],
    [3, "keyId", "string"],
    [4, "ciphertext", "bytes"],
  ],
  // Internal: one entry of a map<string, string> field (ErrorMessage.details).
  _MapEntry: [
    [1, "key", "string"],
    [2, "value", "string"],
  ],
};
