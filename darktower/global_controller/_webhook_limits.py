"""Every bound of the GC's webhooks (docs/protocol.md §18.5), each with its policy.

Beside ``_limits.py`` (the GC's other bounds); the settings (``settings.py``) default to these
where an operator may tune them.
"""

from __future__ import annotations

from typing import Final

# -- registration (REST) ------------------------------------------------------------------------
# Webhooks one client may have; one more is refused with CONFLICT (409).
MAX_WEBHOOKS_PER_CLIENT: Final = 10
# A longer URL is refused with INVALID_REQUEST.
MAX_WEBHOOK_URL_LENGTH: Final = 2048
# ``GET /api/v1/webhooks/{id}/deliveries?limit=``: 1 to this (and its default).
MAX_DELIVERIES_LISTED: Final = 100

# -- the queue in the store -----------------------------------------------------------------------
# Pending deliveries one webhook may have; an event beyond is recorded ``dropped`` (never
# sent), so a dead receiver costs the store at most this many bodies.
MAX_PENDING_PER_WEBHOOK: Final = 1000
# Deliveries kept per webhook for its log (newest first); older finished ones are pruned
# when a new event comes (pending ones are never pruned: they are bounded above).
KEPT_DELIVERIES_PER_WEBHOOK: Final = 1000
# Event ids received are kept this long (unix seconds) so an MC's repeated report is a no-op:
# an MC repeats a batch until the GC answers it, within minutes.
EVENT_ID_KEEP_S: Final = 24 * 3600.0

# -- ReportEvents (gRPC from MCs) ---------------------------------------------------------------
# Events per batch; more is refused with INVALID_REQUEST (the MC sends at most this many).
MAX_EVENTS_PER_BATCH: Final = 500
# An event whose id, meeting id, participant id, stream id or recording id is empty or longer,
# or whose name or reason is longer than MAX_EVENT_TEXT, is skipped and counted (not refused:
# a refused batch is sent again by the MC, and one bad event would hold back the others).
MAX_EVENT_ID_LENGTH: Final = 128
MAX_EVENT_TEXT: Final = 256

# -- the delivery task ----------------------------------------------------------------------------
# Attempts in flight per GC process; each webhook has at most one in flight (in every replica:
# a lease on the webhook's row in the store).
MAX_DELIVERIES_IN_FLIGHT: Final = 4
# One attempt (resolve, connect, TLS, send, the response's head) is cut after this long: a
# failed attempt, retried.
DELIVERY_TIMEOUT_S: Final = 10.0
# A webhook claimed by a replica is its own for this long: a replica that died mid-attempt
# leaves it to another after this (the delivery is then sent again: at least once).
DELIVERY_LEASE_S: Final = 60.0
# The retry delay doubles from --webhook-retry-base-s up to this.
MAX_RETRY_DELAY_S: Final = 300.0
# The task looks at the store at least this often (another replica may have queued something).
DELIVERY_POLL_S: Final = 5.0
# The response's head (status line and headers) is read up to this size; its body is not read.
MAX_RESPONSE_HEAD_BYTES: Final = 16 * 1024
# What an error message recorded for a delivery may hold (characters).
MAX_DELIVERY_ERROR: Final = 200
