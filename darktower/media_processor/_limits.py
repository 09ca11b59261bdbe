"""Bounds of the media processor (docs/architecture.md §10; ``--help`` lists the settable ones)."""

from __future__ import annotations

# Jobs one processor runs at once, by kind; one more is refused with CAPACITY_EXCEEDED, never
# queued. A transcode of 640x480 at 30 fps takes a fair share of a core; a recording almost
# nothing (no codec work: frames are muxed as sent).
MAX_RECORDINGS = 32
MAX_TRANSCODES = 4
MAX_MIXES = 4
# Frames waiting for a job's codec thread. Policy when full: the frame is dropped (counted
# ``queue_full``); a video stream then drops its frames up to its next key frame (a decoder
# cannot use deltas after a gap), audio frames are independent.
JOB_QUEUE_FRAMES = 64
# One encoded frame reassembled from wire frames (docs/protocol.md §7: a frame may span several
# wire frames, the last with END_OF_FRAME). Policy when exceeded: the frame is dropped
# (``oversize``) and the stream waits for its next key frame.
MAX_ASSEMBLED_BYTES = 4 * 1024 * 1024
# Stream ids whose text form a job's reassembly keeps (a cache). Policy when full: emptied.
MAX_STREAM_NAMES = 256
# Bytes of frames a recording holds before its file's header is written (it waits for every
# stream's first frame, at most RECORDING_HEADER_WAIT_S of media time).
RECORDING_BUFFER_BYTES = 8 * 1024 * 1024
RECORDING_HEADER_WAIT_S = 2.0
# A recording writes what it received every this long (docs/architecture.md §10): at 80 frames
# a second of a participant's audio and video, a batch is ~20 frames, well inside
# JOB_QUEUE_FRAMES. A crash loses at most this much beyond the file's last cluster.
RECORDING_WRITE_INTERVAL_S = 0.25
# A job's cleanup (finalizing a file, flushing an encoder) is shielded and bounded by this.
JOB_CLEANUP_GRACE_S = 5.0
# How long a live job's media connection holds an ACK (QUIC's max_ack_delay): a job receives
# bulk media and sends little, so it acks once per this long instead of once per packet burst.
JOB_ACK_DELAY_S = 0.025
# A recording's media connection asks the MH to hold what it sends up to this long
# (``send_delay_ms``, docs/protocol.md §7): the frames of that time leave in a few full packets,
# not one or more per frame, which is most of what a recording costs the processor. Not more:
# what waits at the MH ages, and its age bound (docs/protocol.md §13) drops frames older than
# 200 ms (audio) that a recording then misses in a burst (100 ms did, in a test).
RECORDING_SEND_DELAY_MS = 75
# Recordings on one MH that share a QUIC connection (_connections.py): the MH's WebTransport
# sessions per connection (16); one more opens another connection.
RECORDINGS_PER_CONNECTION = 16
# Received frames buffered between the media session and a job's reader.
MEDIA_BUFFERED_FRAMES = 256
# The mix's frame: Opus at 48 kHz, 20 ms.
MIX_TICK_S = 0.020
# The processor drains in this long: every job ends SERVER_SHUTDOWN and finalizes.
DRAIN_GRACE_S = 10.0
# -- uploads to a recordings bucket (--recordings-s3-endpoint; _uploads.py) ------------------
# Recordings uploaded at once (one file at a time each; boto3 blocks a worker thread per call).
UPLOAD_WORKERS = 2
# Ended recordings waiting for an upload. Policy when full: the recording stays in the local
# directory (logged) and is uploaded at the processor's next start.
UPLOAD_QUEUE = 256
# Started recordings waiting for their start manifest to be put in the bucket. Policy when
# full: that recording is not announced (logged); the bucket gets it when it has ended.
UPLOAD_ANNOUNCE_QUEUE = 64
# Entries of the recordings directory (and of each meeting's) looked at for the recordings
# left to upload at a start, and for a recording's files.
UPLOAD_LEFTOVER_ENTRIES = 20_000
