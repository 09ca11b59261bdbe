#!/bin/sh
# An office afternoon: 6 meetings of 6 people; in each, 2 people talk with their camera on
# (300 kbit/s video + audio) and everyone receives everyone who publishes; 30 seconds; joins
# 4 at a time; the load comes from 2 load tester processes (3 meetings each). About 80
# frames/s per publisher, 12 publishers, 5 receivers each: roughly 1,000 frames/s sent and
# 5,000 frames/s delivered -- enough to see the join latency under concurrent joins and the
# delivery latency and drops of a loaded Media Handler on a small machine.
#
# Run (from the repository root, two terminals):
#     python -m darktower --data-dir /tmp/dt-data     # the all-in-one stack, default ports
#     sh examples/loadtest_office.sh                  # extra options are passed on, e.g.
#     sh examples/loadtest_office.sh --json-file /tmp/office.json --processes 4
#
# 36 joins stay within the Global Controller's 100 requests/min; a larger run waits when the
# GC answers 429 (counted as "retries", not errors). The summary shows join latency, frames
# sent / expected / delivered (not delivered: frames the MH dropped by its queue policy or
# still queued when the run ended), sequence gaps, delivery latency p50/p99, errors by kind,
# and the load testers' own CPU use: when they fell behind their schedule (on a machine
# without idle cores, the server and the load share them) the summary warns that the
# latencies include their own delays.
set -eu
exec "${PYTHON:-python}" -m darktower.loadtest \
    --meetings 6 --participants 6 --publishers 2 --video-kbps 300 --duration 30 \
    --join-concurrency 4 --processes 2 \
    "$@"
