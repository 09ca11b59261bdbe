#!/bin/sh
# A small load test: 2 meetings of 3 participants, everyone publishing synthetic video
# (400 kbit/s: 30 fps, a key frame every 2 s) and audio (50 fps) and subscribed to the
# others, for 10 seconds. A smoke test of a whole deployment: every join must succeed,
# every expected frame must arrive (drops 0), and no error may occur.
#
# Run (from the repository root, two terminals):
#     python -m darktower --data-dir /tmp/dt-data     # the all-in-one stack, default ports
#     sh examples/loadtest_small.sh                   # extra options are passed on, e.g.
#     sh examples/loadtest_small.sh --json            # ... stdout: the summary as one JSON line
#
# It shows a progress line per second on stderr, then the summary: join latency p50/p95/p99/
# max (WebTransport connect -> JoinResponse, and to media connected), frames sent, expected,
# delivered, drops and sequence gaps, delivery latency p50/p99, errors by kind. Exit status 0
# when there was no error and frames were delivered, 1 otherwise, 2 if the stack is not there.
set -eu
exec "${PYTHON:-python}" -m darktower.loadtest \
    --meetings 2 --participants 3 --duration 10 \
    "$@"
