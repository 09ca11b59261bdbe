// Byte helpers shared by the codecs: a chunk queue for incremental readers, hex and UUID forms.
//
// No DOM and no I/O besides reading a ReadableStream the caller hands in, so every reader here
// can be tested with a stream built in the page.

// A FIFO of received chunks. Readers take exact byte counts out of it; a run of bytes that lies
// within one chunk is returned as a view (no copy), one that spans chunks is copied once. Nothing
// is ever re-copied as more data arrives, so gathering an n-byte frame from small chunks costs
// O(n). Bounded by its callers: they take what they need before pulling the next chunk.
export class ByteQueue {
  constructor() {
    this.chunks = [];
    this.offset = 0; // bytes already taken from chunks[0]
    this.length = 0;
  }

  push(chunk) {
    if (chunk.byteLength === 0) return;
    this.chunks.push(chunk);
    this.length += chunk.byteLength;
  }

  // The byte at position i (0 = next unread byte), or undefined past the end.
  byteAt(i) {
    if (i >= this.length) return undefined;
    let pos = this.offset + i;
    for (const chunk of this.chunks) {
      if (pos < chunk.byteLength) return chunk[pos];
      pos -= chunk.byteLength;
    }
    return undefined;
  }

  // The next n bytes, removed from the queue. The caller checks `length >= n` first.
  take(n) {
    if (n > this.length) throw new RangeError(`take(${n}) with ${this.length} bytes queued`);
    const first = this.chunks[0];
    let out;
    if (n === 0) {
      out = new Uint8Array(0);
    } else if (first.byteLength - this.offset >= n) {
      out = first.subarray(this.offset, this.offset + n);
      this.offset += n;
    } else {
      out = new Uint8Array(n);
      let filled = 0;
      while (filled < n) {
        const chunk = this.chunks[0];
        const m = Math.min(n - filled, chunk.byteLength - this.offset);
        out.set(chunk.subarray(this.offset, this.offset + m), filled);
        filled += m;
        this.offset += m;
        if (this.offset === chunk.byteLength) {
          this.chunks.shift();
          this.offset = 0;
        }
      }
    }
    if (this.chunks.length && this.offset === this.chunks[0].byteLength) {
      this.chunks.shift();
      this.offset = 0;
    }
    this.length -= n;
    return out;
  }
}

// Yields the chunks of a ReadableStream of Uint8Array and releases its lock when the consumer
// stops early (a `break` or a throw in the `for await` body cancels the stream).
export async function* readChunks(readable) {
  const reader = readable.getReader();
  let finished = false;
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) {
        finished = true;
        return;
      }
      yield value instanceof Uint8Array ? value : new Uint8Array(value);
    }
  } finally {
    if (!finished) {
      try {
        await reader.cancel();
      } catch {
        // Already errored or closed: nothing left to release.
      }
    }
    reader.releaseLock();
  }
}

export function concatBytes(parts) {
  let total = 0;
  for (const p of parts) total += p.byteLength;
  const out = new Uint8Array(total);
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.byteLength;
  }
  return out;
}

export function toHex(bytes) {
  let s = "";
  for (const b of bytes) s += b.toString(16).padStart(2, "0");
  return s;
}

export function fromHex(hex) {
  if (hex.length % 2) throw new Error("odd-length hex string");
  const out = new Uint8Array(hex.length / 2);
  for (let i = 0; i < out.length; i++) {
    const byte = Number.parseInt(hex.substr(i * 2, 2), 16);
    if (Number.isNaN(byte)) throw new Error(`bad hex at ${i * 2}`);
    out[i] = byte;
  }
  return out;
}

// UUID string form ("xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx") <-> its 16 bytes, as in the media
// frame header (docs/protocol.md §7: the signaling stream_id is the string form of the header's
// bytes).
export function uuidToBytes(uuid) {
  const hex = uuid.replaceAll("-", "");
  if (!/^[0-9a-fA-F]{32}$/.test(hex)) throw new Error(`not a UUID: ${uuid}`);
  return fromHex(hex);
}

export function bytesToUuid(bytes) {
  if (bytes.byteLength !== 16) throw new Error(`a UUID is 16 bytes, got ${bytes.byteLength}`);
  const h = toHex(bytes);
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}
