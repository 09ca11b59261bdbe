// A hand-written protobuf codec for the signaling messages the page uses (proto/darktower/v1/
// common.proto and signaling.proto), and the varint length-delimited framing of the signaling
// stream (docs/protocol.md §2).
//
// Messages are plain objects whose keys are the protobuf JSON names (lowerCamelCase:
// `participantId`, `existingParticipants`, `e2eePublicKey`). Decoding fills proto3 defaults for
// scalars ("" / 0 / false / empty bytes), [] for repeated fields and {} for maps; absent
// sub-messages and unset oneof members stay undefined. uint64 fields decode to a Number when it
// is a safe integer, else to a BigInt; encoding takes either. Enums are numbers (see the
// constants below). Unknown fields are skipped. An envelope's oneof member is found with
// `kindOf(msg)`.
//
// Encoding writes fields in field-number order, skips proto3 defaults, always writes a set
// oneof member (even an empty message such as `leave: {}`), and writes map entries sorted by key
// with both key and value: the same bytes as Python's SerializeToString(deterministic=True).

import { ByteQueue, concatBytes, readChunks } from "./bytes.js";
import { ConnectionState, ErrorCode, LeaveReason, SCHEMA, StreamType } from "./schema.js";

export { ConnectionState, ErrorCode, LeaveReason, StreamType };

// Limit: the largest signaling message either side accepts (docs/protocol.md §3.1). Policy: a
// larger declared length fails the stream reader at once (the body is never buffered) and an
// encoder refuses to build one; the page then closes the session.
export const MAX_MESSAGE_SIZE = 64 * 1024;
// The protocol version every ClientMessage the page sends carries in `protocolVersion`
// (docs/protocol.md §12): darktower/protocol/versions.py's, which tests/browser/test_codes.py
// keeps equal.
export const PROTOCOL_VERSION = 1;
const MAX_VARINT_LEN = 10;

export const MESSAGE_TYPES = Object.freeze(Object.keys(SCHEMA).filter((t) => !t.startsWith("_")));

const WIRE_VARINT = 0;
const WIRE_I64 = 1;
const WIRE_LEN = 2;
const WIRE_I32 = 5;
const VARINT_TYPES = new Set(["uint32", "uint64", "bool", "enum"]);

export class ProtoError extends Error {
  // `code` is the ErrorCode the session closes with; `reason` tells faults apart.
  constructor(message, reason, code = ErrorCode.INVALID_REQUEST) {
    super(message);
    this.name = "ProtoError";
    this.reason = reason;
    this.code = code;
  }
}

function fieldsOf(type) {
  const fields = SCHEMA[type];
  if (!fields) throw new Error(`unknown message type ${type}`);
  return fields;
}

// The name of the oneof member set in `msg` (an envelope), or undefined.
export function kindOf(msg, type = "ServerMessage") {
  for (const [, name, , mode] of fieldsOf(type)) {
    if (mode === "oneof" && msg[name] !== undefined && msg[name] !== null) return name;
  }
  return undefined;
}

// ---------------------------------------------------------------------------------- encoding

class Writer {
  constructor() {
    this.parts = [];
    this.bytes = [];
  }

  flush() {
    if (this.bytes.length) {
      this.parts.push(Uint8Array.from(this.bytes));
      this.bytes = [];
    }
  }

  varint(value) {
    if (typeof value === "bigint" || value > 0xffffffff) {
      let v = BigInt.asUintN(64, BigInt(value));
      while (v > 0x7fn) {
        this.bytes.push(Number(v & 0x7fn) | 0x80);
        v >>= 7n;
      }
      this.bytes.push(Number(v));
      return;
    }
    let v = value >>> 0;
    while (v > 0x7f) {
      this.bytes.push((v & 0x7f) | 0x80);
      v >>>= 7;
    }
    this.bytes.push(v);
  }

  tag(number, wire) {
    this.varint(number * 8 + wire);
  }

  raw(bytes) {
    this.flush();
    this.parts.push(bytes);
  }

  lengthDelimited(number, bytes) {
    this.tag(number, WIRE_LEN);
    this.varint(bytes.byteLength);
    this.raw(bytes);
  }

  finish() {
    this.flush();
    return concatBytes(this.parts);
  }
}

const textEncoder = new TextEncoder();
const textDecoder = new TextDecoder("utf-8", { fatal: true });

function isDefault(type, value) {
  switch (type) {
    case "string":
      return value === "";
    case "bytes":
      return value.byteLength === 0;
    case "bool":
      return value === false;
    default:
      return value === 0 || value === 0n;
  }
}

function writeValue(w, number, type, value) {
  switch (type) {
    case "string":
      w.lengthDelimited(number, textEncoder.encode(value));
      return;
    case "bytes":
      w.lengthDelimited(number, value);
      return;
    case "bool":
      w.tag(number, WIRE_VARINT);
      w.varint(value ? 1 : 0);
      return;
    case "uint32":
    case "enum":
    case "uint64":
      w.tag(number, WIRE_VARINT);
      w.varint(value);
      return;
    case "float": {
      const b = new Uint8Array(4);
      new DataView(b.buffer).setFloat32(0, value, true);
      w.tag(number, WIRE_I32);
      w.raw(b);
      return;
    }
    default:
      w.lengthDelimited(number, encode(type, value));
  }
}

// The body bytes of `msg` as message `type` (no length prefix).
export function encode(type, msg) {
  const w = new Writer();
  for (const [number, name, ftype, mode] of fieldsOf(type)) {
    const value = msg[name];
    if (value === undefined || value === null) continue;
    if (mode === "repeated") {
      for (const item of value) writeValue(w, number, ftype, item);
    } else if (ftype === "map") {
      for (const key of Object.keys(value).sort()) {
        const entry = new Writer();
        writeValue(entry, 1, "string", key);
        writeValue(entry, 2, "string", value[key]);
        w.lengthDelimited(number, entry.finish());
      }
    } else if (mode === "oneof" || SCHEMA[ftype] || !isDefault(ftype, value)) {
      writeValue(w, number, ftype, value);
    }
  }
  return w.finish();
}

// ---------------------------------------------------------------------------------- decoding

// Reads an unsigned varint at `pos` of `buf`: [value, next position]. The value is a Number when
// it is a safe integer, else a BigInt (a uint64 beyond 2**53).
export function readVarint(buf, pos) {
  let value = 0;
  for (let i = 0; i < 7; i++) {
    if (pos + i >= buf.byteLength) throw new ProtoError("truncated varint", "truncated_message");
    const b = buf[pos + i];
    value += (b & 0x7f) * 2 ** (7 * i);
    if (b < 0x80) return [value, pos + i + 1];
  }
  // Longer than 49 bits: finish in BigInt.
  let big = BigInt(value);
  for (let i = 7; i < MAX_VARINT_LEN; i++) {
    if (pos + i >= buf.byteLength) throw new ProtoError("truncated varint", "truncated_message");
    const b = buf[pos + i];
    big |= BigInt(b & 0x7f) << BigInt(7 * i);
    if (b < 0x80) {
      big = BigInt.asUintN(64, big);
      return [big <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(big) : big, pos + i + 1];
    }
  }
  throw new ProtoError("varint longer than 10 bytes", "bad_varint");
}

function defaultsOf(type) {
  const out = {};
  for (const [, name, ftype, mode] of fieldsOf(type)) {
    if (mode === "oneof") continue;
    if (mode === "repeated") out[name] = [];
    else if (ftype === "map") out[name] = {};
    else if (ftype === "string") out[name] = "";
    else if (ftype === "bytes") out[name] = new Uint8Array(0);
    else if (ftype === "bool") out[name] = false;
    else if (!SCHEMA[ftype]) out[name] = 0;
  }
  return out;
}

function skipField(buf, pos, wire) {
  switch (wire) {
    case WIRE_VARINT:
      return readVarint(buf, pos)[1];
    case WIRE_I64:
      return pos + 8;
    case WIRE_LEN: {
      const [len, at] = readVarint(buf, pos);
      return at + Number(len);
    }
    case WIRE_I32:
      return pos + 4;
    default:
      throw new ProtoError(`unsupported wire type ${wire}`, "undecodable_message");
  }
}

function decodeMapEntry(bytes) {
  const entry = decode("_MapEntry", bytes);
  return [entry.key, entry.value];
}

function decodeScalar(ftype, wire, buf, pos) {
  // -> [value, next position]; wire type already checked by the caller.
  switch (ftype) {
    case "float":
      return [new DataView(buf.buffer, buf.byteOffset + pos, 4).getFloat32(0, true), pos + 4];
    case "bool": {
      const [v, at] = readVarint(buf, pos);
      return [v !== 0 && v !== 0n, at];
    }
    case "uint32":
    case "enum": {
      const [v, at] = readVarint(buf, pos);
      return [Number(BigInt.asUintN(32, BigInt(v))), at];
    }
    case "uint64":
      return readVarint(buf, pos);
    default:
      throw new Error(`not a scalar: ${ftype}`);
  }
}

function expectedWire(ftype) {
  if (VARINT_TYPES.has(ftype)) return WIRE_VARINT;
  if (ftype === "float") return WIRE_I32;
  return WIRE_LEN;
}

// Decodes the body bytes `buf` as message `type`. Throws ProtoError on malformed input.
export function decode(type, buf) {
  const fields = fieldsOf(type);
  const byNumber = new Map(fields.map((f) => [f[0], f]));
  const out = defaultsOf(type);
  let pos = 0;
  while (pos < buf.byteLength) {
    const [tag, at] = readVarint(buf, pos);
    const number = Math.floor(Number(tag) / 8);
    const wire = Number(tag) % 8;
    pos = at;
    const field = byNumber.get(number);
    if (!field || wire !== expectedWire(field[2])) {
      pos = skipField(buf, pos, wire);
      if (pos > buf.byteLength) throw new ProtoError("truncated field", "truncated_message");
      continue;
    }
    const [, name, ftype, mode] = field;
    let value;
    if (wire === WIRE_LEN) {
      const [len, start] = readVarint(buf, pos);
      const end = start + Number(len);
      if (end > buf.byteLength) throw new ProtoError("truncated field", "truncated_message");
      const body = buf.subarray(start, end);
      pos = end;
      if (ftype === "map") {
        const [k, v] = decodeMapEntry(body);
        out[name][k] = v;
        continue;
      }
      if (ftype === "string") {
        try {
          value = textDecoder.decode(body);
        } catch {
          throw new ProtoError(`field ${name} is not UTF-8`, "undecodable_message");
        }
      } else if (ftype === "bytes") value = body.slice();
      else value = decode(ftype, body);
    } else {
      if (wire === WIRE_I32 && pos + 4 > buf.byteLength) {
        throw new ProtoError("truncated field", "truncated_message");
      }
      [value, pos] = decodeScalar(ftype, wire, buf, pos);
    }
    if (mode === "repeated") out[name].push(value);
    else {
      if (mode === "oneof") {
        for (const [, other, , m] of fields) if (m === "oneof") delete out[other];
      }
      out[name] = value;
    }
  }
  return out;
}

// ------------------------------------------------------------------------ delimited framing

function varintBytes(n) {
  const w = new Writer();
  w.varint(n);
  return w.finish();
}

// `msg` encoded as `type` and preceded by its length as a varint. Throws ProtoError when the
// body exceeds `maxSize` (the peer would refuse it).
export function encodeDelimited(type, msg, maxSize = MAX_MESSAGE_SIZE) {
  const body = encode(type, msg);
  if (body.byteLength > maxSize) {
    throw new ProtoError(
      `${type} of ${body.byteLength} bytes exceeds the ${maxSize}-byte limit`,
      "message_too_large",
      ErrorCode.INTERNAL_ERROR,
    );
  }
  return concatBytes([varintBytes(body.byteLength), body]);
}

// Incremental decoder of length-delimited `type` messages: push chunks of any size, pull
// messages. Holds at most one unfinished message (≤ 10 + maxSize bytes): a declared length over
// `maxSize` throws before its body is buffered.
export class MessageDecoder {
  constructor(type, maxSize = MAX_MESSAGE_SIZE) {
    fieldsOf(type);
    this.type = type;
    this.maxSize = maxSize;
    this.queue = new ByteQueue();
  }

  push(chunk) {
    this.queue.push(chunk);
  }

  // The next complete message, or undefined until more bytes arrive.
  next() {
    const q = this.queue;
    let len = 0;
    let i = 0;
    for (;; i++) {
      if (i >= MAX_VARINT_LEN) throw new ProtoError("bad length prefix", "bad_length_prefix");
      const b = q.byteAt(i);
      if (b === undefined) return undefined;
      len += (b & 0x7f) * 2 ** (7 * i);
      if (len > this.maxSize) {
        throw new ProtoError(
          `message longer than ${this.maxSize} bytes`,
          "message_too_large",
        );
      }
      if (b < 0x80) break;
    }
    if (q.length < i + 1 + len) return undefined;
    q.take(i + 1);
    return decode(this.type, q.take(len));
  }

  // Call when the stream ended: throws if a message was cut off.
  end() {
    if (this.queue.length) {
      throw new ProtoError("stream ended inside a message", "truncated_message");
    }
  }
}

// Yields the `type` messages read from a ReadableStream of bytes (a WebTransport stream's
// readable), in order; throws ProtoError on malformed input. Stopping the iteration cancels the
// stream.
export async function* readMessages(readable, type, maxSize = MAX_MESSAGE_SIZE) {
  const decoder = new MessageDecoder(type, maxSize);
  for await (const chunk of readChunks(readable)) {
    decoder.push(chunk);
    for (let msg = decoder.next(); msg !== undefined; msg = decoder.next()) yield msg;
  }
  decoder.end();
}
