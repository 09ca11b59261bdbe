"""The one subclass of aioquic's QuicConnection: stream credit follows what the application read.

aioquic raises a stream's MAX_STREAM_DATA as data *arrives* (doubling the window), so a reader
that never reads would buffer without bound. Here, for the streams the driver owns, the credit
is ``consumed + window``: it is raised only as the application consumes data. Other streams
(HTTP/3 control, QPACK, request streams) keep aioquic's policy.

Liveness (docs/protocol.md §13): the idle timer restarts only on packets received from the
peer, never on our own, and the probe timeout's backoff stops doubling at PTO_BACKOFF_CAP_S,
so a path back from a blackout is probed within that time. Migration: each connection ID this
side issues is reported as it is written (``_dt_cid_issued``), so the endpoint routes it before
the peer can use it.

A client's ClientHello offers key shares for P-256 and X25519 only, the groups Dark Tower's
servers (either core) pick from them, P-256 first as aioquic orders them: aioquic generates
four, and P-384's and X448's were 450 µs of a client's CPU per ClientHello (twice after a
Retry) for shares no server used.

Two savings of memory per connection (an idle connection is otherwise ~60 KB of aioquic state):
the handshake's TLS output buffers are freed once the handshake is confirmed (aioquic keeps
three 16 KiB buffers for the connection's lifetime), and the frame-handler table is shared by
all connections instead of built for each (34 bound methods, tuples and frozensets, ~10 KB).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from aioquic._buffer import Buffer
from aioquic.quic.connection import (
    MAX_STREAM_DATA_FRAME_CAPACITY,
    NetworkAddress,
    QuicConnection,
    QuicConnectionError,
)
from aioquic.quic.packet import (
    QuicErrorCode,
    QuicFrameType,
    pull_quic_transport_parameters,
    push_quic_transport_parameters,
)
from aioquic.quic.packet_builder import QuicDeliveryState
from aioquic.tls import Epoch, Group

from darktower.protocol.addresses import is_loopback

from ._ack_frequency import (
    ACK_FREQUENCY_CAPACITY,
    ACK_FREQUENCY_FRAME,
    IMMEDIATE_ACK_FRAME,
    MIN_ACK_DELAY_US,
    AckFrequency,
    AckFrequencyError,
    ack_request,
    encode_min_ack_delay,
    find_min_ack_delay,
    pull_ack_frequency,
    push_ack_frequency,
)
from ._certs import certificate_sha256
from ._config import LOOPBACK_PACKET_SIZE, MEDIA_ACK_THRESHOLD, PTO_BACKOFF_CAP_S, TransportLimits
from ._stream_table import StreamTable

# The max_ack_delay aioquic advertises (25 ms): the limits' ACK delay never goes beyond it (a
# peer's ACK_FREQUENCY may set another, as the extension says).
MAX_ACK_DELAY_S = 0.025
# RFC 9000 §18.2: a peer that does not advertise max_ack_delay keeps 25 ms.
DEFAULT_PEER_MAX_ACK_DELAY_MS = 25
# An ACK owed leaves with the first data sent before it is due (docs/architecture.md §5.1).
# Made due then, it is due a little before now: aioquic lets a due ACK past its pacer only
# when strictly past due, and at exactly ``now`` its timer would fire again and again.
_DUE_NOW_S = 1e-6
# Capacity of each TLS output buffer once the handshake is confirmed (nothing is written then).
POST_HANDSHAKE_CRYPTO_BUFFER = 0

# The groups a client offers key shares for (aioquic's order kept; see the docstring).
CLIENT_KEY_SHARE_GROUPS = (Group.SECP256R1, Group.X25519)

# Returns the offset the application has consumed up to, or None for streams we do not manage.
ConsumedLookup = Callable[[int], int | None]
# Called with each connection ID this side issues (NEW_CONNECTION_ID), as it is written.
CidIssued = Callable[[bytes], None]


# aioquic's per-connection frame table: {frame type: (bound handler, allowed epochs)}.
_FRAME_TABLE_ATTR = "_QuicConnection__frame_handlers"


class _FrameHandlers:
    """Stands in for aioquic's per-connection frame table, which is only ever indexed (an
    unknown type raises KeyError, as from the dict). The handlers are bound on lookup."""

    __slots__ = ("_conn", "_table")

    def __init__(self, conn: QuicConnection, table: dict[int, tuple[Any, frozenset[Any]]]) -> None:
        self._conn = conn
        self._table = table

    def __getitem__(self, frame_type: int) -> tuple[Any, frozenset[Any]]:
        handler, epochs = self._table[frame_type]
        return handler.__get__(self._conn), epochs


def _ignore_cid(cid: bytes) -> None:
    pass


class CreditedQuicConnection(QuicConnection):
    # The frame table with unbound handlers, built from the first connection of each class.
    _dt_frame_table: ClassVar[dict[int, tuple[Any, frozenset[Any]]] | None] = None

    def __init__(self, *, consumed: ConsumedLookup, window: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._streams = StreamTable()  # values(): the streams we receive on (_stream_table.py)
        # How the connection ended when this side did not close it (for ``ConnectionLost``
        # and ``IdleTimeout``, _end.py): the peer's CONNECTION_CLOSE, or QUIC's idle timer.
        self.dt_closed_by_peer = False
        self.dt_idle_timeout = False
        self._dt_consumed = consumed
        self._dt_window = window
        self._dt_cid_issued: CidIssued = _ignore_cid
        self.dt_pto_backoff_cap_s = PTO_BACKOFF_CAP_S
        # max_udp_payload_size: what this side advertises (None: nothing, RFC 9000's default),
        # and what the peer advertised, if anything (aioquic checks it and drops it).
        self.dt_advertised_max_udp_payload: int | None = None
        self.dt_peer_max_udp_payload: int | None = None
        # A media receiver's ACK policy (docs/architecture.md §5.1). None: aioquic's, an ACK
        # one ACK delay after the first packet that asks for one. Else also an ACK at once
        # when this many ack-eliciting 1-RTT packets are unacknowledged, or one arrives out
        # of order or after a gap.
        self._dt_ack_threshold: int | None = None
        self._dt_eliciting = 0  # ack-eliciting 1-RTT packets received since our last ACK
        self._dt_ack_on_reorder = True  # an ACK at once for a packet out of order or a gap
        # The ACK-frequency extension (_ack_frequency.py), receiver side: the largest
        # ACK_FREQUENCY sequence number applied. Sender side: what limits.peer_ack_delay_s
        # asks (delay, threshold), the peer's min_ack_delay (None: no support), and the
        # frame to write (again when lost) and the last one written.
        self._dt_ack_frequency_seen = -1
        self._dt_ack_wanted: tuple[float, int] | None = None
        self.dt_peer_min_ack_delay_us: int | None = None
        self._dt_ack_frequency_pending: AckFrequency | None = None
        self._dt_ack_frequency_sent: AckFrequency | None = None
        self._dt_share_frame_table()

    def _initialize(self, peer_cid: bytes) -> None:
        super()._initialize(peer_cid)  # the TLS context, created again after a Retry
        if self._is_client:
            groups = self.tls._supported_groups
            self.tls._supported_groups = [g for g in groups if g in CLIENT_KEY_SHARE_GROUPS]

    def _serialize_transport_parameters(self) -> bytes:
        data = super()._serialize_transport_parameters()
        if self.dt_advertised_max_udp_payload is not None:
            params = pull_quic_transport_parameters(Buffer(data=data))
            params.max_udp_payload_size = self.dt_advertised_max_udp_payload
            buf = Buffer(capacity=len(data) + 16)
            push_quic_transport_parameters(buf, params)
            data = buf.data
        return data + encode_min_ack_delay(MIN_ACK_DELAY_US)

    def _parse_transport_parameters(self, data: bytes, from_session_ticket: bool = False) -> None:
        super()._parse_transport_parameters(data, from_session_ticket)
        if not from_session_ticket:
            params = pull_quic_transport_parameters(Buffer(data=data))
            self.dt_peer_max_udp_payload = params.max_udp_payload_size
            max_ack_delay = params.max_ack_delay
            if max_ack_delay is None:
                max_ack_delay = DEFAULT_PEER_MAX_ACK_DELAY_MS
            try:
                peer_min = find_min_ack_delay(data, max_ack_delay)
            except AckFrequencyError as exc:
                raise QuicConnectionError(
                    error_code=QuicErrorCode.TRANSPORT_PARAMETER_ERROR,
                    frame_type=QuicFrameType.CRYPTO,
                    reason_phrase=str(exc),
                ) from None
            self.dt_peer_min_ack_delay_us = peer_min
            if peer_min is not None and self._dt_ack_wanted is not None:
                delay_s, threshold = self._dt_ack_wanted
                frame = ack_request(0, delay_s, threshold, peer_min, max_ack_delay)
                self._dt_ack_frequency_pending = frame

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, NetworkAddress]]:
        # An ACK owed but not yet due leaves in the first packet of data going now rather
        # than alone later (aioquic writes one only once due): one packet instead of two.
        space = self._spaces.get(Epoch.ONE_RTT)
        if (
            space is not None
            and space.ack_at is not None
            and space.ack_at > now
            and self._cryptos[Epoch.ONE_RTT].send.is_valid()
            and self._dt_data_leaves(now)
        ):
            space.ack_at = now - _DUE_NOW_S
        return super().datagrams_to_send(now)

    def _dt_data_leaves(self, now: float) -> bool:
        """Whether data leaves in this flush: queued, and neither the congestion window, the
        pacer nor the peer's flow-control credit holds it back (held data would send the ACK
        alone, and early)."""
        loss = self._loss
        if loss.bytes_in_flight >= loss.congestion_window:
            return False
        if loss._pacer.next_send_time(now) is not None:
            return False
        if self._datagrams_pending:
            return True
        connection_credit = self._remote_max_data > self._remote_max_data_used
        for stream in self._streams_queue:
            sender = stream.sender
            offset = sender.next_offset  # below _buffer_stop: data not yet sent, or lost
            if stream.is_blocked or offset >= sender._buffer_stop:
                continue
            if offset < stream.max_stream_data_remote and (
                offset < sender.highest_offset or connection_credit
            ):
                return True
        return False

    def dt_ack_due(self) -> float | None:
        """When the earliest ACK the peer is owed is due (None: none is owed)."""
        due = [space.ack_at for space in self._spaces.values() if space.ack_at is not None]
        return min(due) if due else None

    # --- what the driver reads, the same on every core (_core.py) ---------------------------
    def dt_unacked(self, stream_id: int) -> int:
        """Bytes written to the stream and not yet acknowledged (0 once QUIC discarded it)."""
        stream = self._streams.get(stream_id)
        if stream is None:
            return 0
        return int(stream.sender._buffer_stop - stream.sender._buffer_start)

    def dt_write_offset(self, stream_id: int) -> int | None:
        """The stream offset written up to (-1 once it is reset or QUIC discarded it; _sent.py)."""
        stream = self._streams.get(stream_id)
        sender = None if stream is None else stream.sender
        return -1 if sender is None or sender._reset_error_code is not None else sender._buffer_stop

    def dt_sent_offset(self, stream_id: int) -> int | None:
        """The stream offset below which nothing waits to be sent (a lost range waits again,
        for its retransmission; -1 once it is reset or QUIC discarded it; _sent.py)."""
        stream = self._streams.get(stream_id)
        sender = None if stream is None else stream.sender
        return -1 if sender is None or sender._reset_error_code is not None else sender.next_offset

    def dt_send_credit(self, stream_id: int) -> int:
        """The peer's MAX_STREAM_DATA for the stream (0 once QUIC discarded it)."""
        stream = self._streams.get(stream_id)
        return 0 if stream is None else int(stream.max_stream_data_remote)

    def dt_credit_due(self, stream_id: int, consumed: int) -> bool:
        """Whether reading up to ``consumed`` makes a MAX_STREAM_DATA due (see
        _write_stream_limits)."""
        stream = self._streams.get(stream_id)
        window = self._dt_window
        return (
            stream is not None and consumed + window - stream.max_stream_data_local >= window // 2
        )

    def dt_stream_gone(self, stream_id: int) -> bool:
        """Whether QUIC has discarded the stream (both sides done and acknowledged)."""
        return stream_id not in self._streams

    def dt_queue_datagram(self, payload: bytes, queue_size: int) -> int:
        """Queue a DATAGRAM frame; aioquic's queue is unbounded, so it is kept at most
        ``queue_size``, dropping the oldest. Returns how many were dropped."""
        pending = self._datagrams_pending
        dropped = 0
        while len(pending) >= queue_size:
            pending.popleft()
            dropped += 1
        pending.append(payload)
        return dropped

    def dt_can_open(self, unidirectional: bool) -> bool:
        """Whether a stream may be opened now: always (aioquic holds a stream beyond the
        peer's MAX_STREAMS, and what is written to it, until credit comes)."""
        return True

    def dt_uni_stream_credit(self) -> int:
        """Unidirectional streams the peer's MAX_STREAMS still lets this side open."""
        return int(self._remote_max_streams_uni - self._local_next_stream_id_uni // 4)

    def dt_peer_certificate_sha256(self) -> bytes | None:
        """SHA-256 of the peer's leaf certificate (DER), None without one."""
        cert = self.tls._peer_certificate
        return None if cert is None else certificate_sha256(cert)

    def dt_apply_limits(self, limits: TransportLimits) -> None:
        """Before the handshake: the ACK delay (never beyond the max_ack_delay advertised), the
        ACK threshold and the max_udp_payload_size to advertise."""
        if limits.ack_delay_s is not None:
            self._ack_delay = min(limits.ack_delay_s, MAX_ACK_DELAY_S)
        self._dt_ack_threshold = limits.ack_eliciting_threshold
        if limits.peer_ack_delay_s is not None:
            self._dt_ack_wanted = (limits.peer_ack_delay_s, MEDIA_ACK_THRESHOLD)
        self.dt_advertised_max_udp_payload = limits.receive_packet_size

    def dt_loopback_packets(self) -> None:
        """Server side, once the handshake is done: a peer on this machine that advertised
        large packets (a co-located media processor, docs/architecture.md §10) gets packets
        of up to LOOPBACK_PACKET_SIZE, so the same media takes fewer packets. The congestion
        controller goes on counting bytes."""
        advertised = self.dt_peer_max_udp_payload or 0
        addr = self.get_peer_address()
        if advertised >= LOOPBACK_PACKET_SIZE and addr is not None and is_loopback(str(addr[0])):
            self._max_datagram_size = max(self._max_datagram_size, LOOPBACK_PACKET_SIZE)

    def _dt_share_frame_table(self) -> None:
        cls = type(self)
        # Looked up on this very class: a subclass may override handlers.
        table = cls.__dict__.get("_dt_frame_table")
        if table is None:
            own = getattr(self, _FRAME_TABLE_ATTR)
            table = {t: (bound.__func__, epochs) for t, (bound, epochs) in own.items()}
            one_rtt = frozenset({Epoch.ONE_RTT})  # not 0-RTT: support is per connection
            table[ACK_FREQUENCY_FRAME] = (cls._dt_handle_ack_frequency, one_rtt)
            table[IMMEDIATE_ACK_FRAME] = (cls._dt_handle_immediate_ack, one_rtt)
            cls._dt_frame_table = table
        setattr(self, _FRAME_TABLE_ATTR, _FrameHandlers(self, table))

    def receive_datagram(self, data: bytes, addr: NetworkAddress, now: float) -> None:
        threshold = self._dt_ack_threshold
        if threshold is None:
            super().receive_datagram(data, addr, now)
        else:
            self._dt_receive_and_ack(data, addr, now, threshold)
        # Liveness (docs/protocol.md §13): the idle timer restarts only when a packet from the
        # peer is processed. aioquic also restarts it on the first ack-eliciting packet we
        # send after a receipt (RFC 9000 §10.1 allows it), so a keepalive PING to a dead peer
        # would push its end a keepalive interval later; marking that packet as already sent
        # keeps the deadline at the last receipt + the idle timeout.
        self._ack_eliciting_sent_since_receipt = True

    def _dt_receive_and_ack(
        self, data: bytes, addr: NetworkAddress, now: float, threshold: int
    ) -> None:
        # RFC 9000 §13.2.1-2: an ACK after every ``threshold`` ack-eliciting packets, and at
        # once for one that arrives out of order or after a gap (the sender's loss detection
        # waits for nothing); otherwise the ACK delay. A 1-RTT packet is always the last of
        # its datagram, so a datagram brings at most one.
        space = self._spaces.get(Epoch.ONE_RTT)
        if space is None:
            super().receive_datagram(data, addr, now)
            return
        largest, eliciting = space.largest_received_packet, self._dt_eliciting
        super().receive_datagram(data, addr, now)
        if self._dt_eliciting == eliciting or space.ack_at is None or space.ack_at <= now:
            return
        newest = space.largest_received_packet
        if self._dt_eliciting >= threshold or (
            self._dt_ack_on_reorder and (newest == largest or newest > largest + 1 >= 1)
        ):
            space.ack_at = now - _DUE_NOW_S

    # --- the ACK-frequency extension (_ack_frequency.py; docs/architecture.md §5.1) ---------
    def _dt_handle_ack_frequency(self, context: Any, frame_type: int, buf: Buffer) -> None:
        try:
            frame = pull_ack_frequency(buf, MIN_ACK_DELAY_US)
        except AckFrequencyError as exc:
            raise QuicConnectionError(
                error_code=QuicErrorCode.PROTOCOL_VIOLATION,
                frame_type=frame_type,
                reason_phrase=str(exc),
            ) from None
        if frame.sequence <= self._dt_ack_frequency_seen:
            return  # an older request, reordered or repeated: ignored
        self._dt_ack_frequency_seen = frame.sequence
        self._ack_delay = frame.max_ack_delay_us / 1e6
        # Sent when more than ``threshold`` are unacknowledged; a reordering threshold above
        # 1 is kept as 1 (an ACK earlier than asked is always allowed).
        self._dt_ack_threshold = frame.threshold + 1
        self._dt_ack_on_reorder = frame.reordering != 0

    def _dt_handle_immediate_ack(self, context: Any, frame_type: int, buf: Buffer) -> None:
        self._spaces[Epoch.ONE_RTT].ack_at = context.time - _DUE_NOW_S

    def _write_connection_limits(self, builder: Any, space: Any) -> None:
        super()._write_connection_limits(builder, space)
        frame = self._dt_ack_frequency_pending
        if frame is None:
            return
        buf = builder.start_frame(
            ACK_FREQUENCY_FRAME,
            capacity=ACK_FREQUENCY_CAPACITY,
            handler=self._dt_on_ack_frequency_delivery,
            handler_args=(frame,),
        )
        push_ack_frequency(buf, frame)
        self._dt_ack_frequency_pending = None
        self._dt_ack_frequency_sent = frame

    def _dt_on_ack_frequency_delivery(
        self, delivery: QuicDeliveryState, frame: AckFrequency
    ) -> None:
        # Lost: sent again, unless a later request went out since.
        if delivery != QuicDeliveryState.ACKED and frame is self._dt_ack_frequency_sent:
            self._dt_ack_frequency_pending = frame

    def _payload_received(
        self, context: Any, plain: bytes, crypto_frame_required: bool = False
    ) -> tuple[bool, bool]:
        eliciting, probing = super()._payload_received(
            context, plain, crypto_frame_required=crypto_frame_required
        )
        if eliciting and context.epoch == Epoch.ONE_RTT:
            self._dt_eliciting += 1
        return eliciting, probing

    def _write_ack_frame(self, builder: Any, space: Any, now: float) -> None:
        super()._write_ack_frame(builder, space, now)
        if space is self._spaces.get(Epoch.ONE_RTT):
            self._dt_eliciting = 0

    def handle_timer(self, now: float) -> None:
        # aioquic's own test: its close timer firing with no close under way is the idle timeout.
        close_at = self._close_at
        if close_at is not None and now >= close_at and self._close_event is None:
            self.dt_idle_timeout = True
        super().handle_timer(now)
        self._dt_cap_pto_backoff()

    def _dt_cap_pto_backoff(self) -> None:
        # aioquic arms the probe timer at PTO x 2**_pto_count after the last ack-eliciting
        # packet, and raises the count only when that timer fires (in handle_timer), with no
        # bound. The count is held at the largest value whose backoff stays within the cap
        # (docs/protocol.md §13); the PTO itself (RTT based) is never shortened, and an ACK
        # still resets the count to 0 as before.
        recovery = self._loss
        if recovery._pto_count == 0:
            return
        pto = recovery.get_probe_timeout(include_max_ack_delay=recovery.handshake_confirmed)
        count = 0
        while pto * 2 ** (count + 1) <= self.dt_pto_backoff_cap_s:
            count += 1
        recovery._pto_count = min(recovery._pto_count, count)

    def _handle_connection_close_frame(self, context: Any, frame_type: int, buf: Buffer) -> None:
        if self._close_event is None:  # not already closing on our side
            self.dt_closed_by_peer = True
        super()._handle_connection_close_frame(context, frame_type, buf)

    def _confirm_handshake(self) -> None:
        super()._confirm_handshake()
        # aioquic keeps its TLS output buffers (3 x CRYPTO_BUFFER_SIZE = 48 KiB) for the life
        # of the connection. Once the handshake is confirmed TLS never writes to them again:
        # the Initial and Handshake keys are discarded (their packets no longer decrypt), and
        # in the post-handshake states aioquic's TLS only reads (a client takes
        # NewSessionTicket; a server refuses any message). _push_crypto_data still reads
        # them on every CRYPTO frame, so they are replaced by empty ones rather than removed;
        # should TLS ever write, BufferWriteError would surface instead of data being lost.
        self._crypto_buffers = {
            epoch: Buffer(capacity=POST_HANDSHAKE_CRYPTO_BUFFER) for epoch in self._crypto_buffers
        }

    def _write_new_connection_id_frame(self, builder: Any, connection_id: Any) -> None:
        super()._write_new_connection_id_frame(builder, connection_id)
        self._dt_cid_issued(connection_id.cid)

    def _write_stream_limits(self, builder: Any, space: Any, stream: Any) -> None:
        if not stream.max_stream_data_local:
            return  # our own unidirectional stream: nothing to receive, no credit to give
        consumed = self._dt_consumed(stream.stream_id)
        if consumed is None:
            super()._write_stream_limits(builder, space, stream)
            return
        target = consumed + self._dt_window
        # Raise in steps of half a window so one frame covers many reads.
        if target - stream.max_stream_data_local >= self._dt_window // 2:
            stream.max_stream_data_local = target
        if stream.max_stream_data_local_sent != stream.max_stream_data_local:
            buf = builder.start_frame(
                QuicFrameType.MAX_STREAM_DATA,
                capacity=MAX_STREAM_DATA_FRAME_CAPACITY,
                handler=self._on_max_stream_data_delivery,
                handler_args=(stream,),
            )
            buf.push_uint_var(stream.stream_id)
            buf.push_uint_var(stream.max_stream_data_local)
            stream.max_stream_data_local_sent = stream.max_stream_data_local
