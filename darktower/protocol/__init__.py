"""Pure codecs of the wire protocol (sans-IO: no trio, asyncio, sockets or grpclib).

* The contract as generated protobuf modules: ``pb.signaling_pb2``, ``pb.common_pb2``,
  ``pb.registry_pb2``, ``pb.meeting_control_pb2``, ``pb.media_control_pb2`` (source:
  ``proto/darktower/v1``; regenerate with ``nox -s proto``). The signaling envelopes
  :class:`ClientMessage` / :class:`ServerMessage` and :class:`ErrorMessage` are re-exported.
  The grpclib service stubs live in ``darktower.protocol.pb.v1.*_grpc`` and are imported only
  by the transport layer, because they load grpclib and asyncio.
* Signaling framing (docs/protocol.md §2): :func:`encode_message` and the incremental
  :class:`MessageDecoder` for varint-length-delimited messages, at most
  :data:`MAX_MESSAGE_SIZE` bytes each.
* Signaling bounds (docs/protocol.md, "Signaling limits"): :func:`check_bounds` refuses a
  client message with a field over its maximum (:data:`CLIENT_FIELD_BOUNDS`) naming it.
* Errors: :data:`ERROR_TABLE` maps each :class:`~darktower.errors.ErrorCode` to its HTTP
  status, JSON name, gRPC status (:class:`GrpcStatus`) and exception class; :func:`error_body`,
  :func:`error_message` and their inverses convert at the boundary.
* Enum conversions between :mod:`darktower.model` and protobuf.

Token and rate-limit code lives in ``darktower.protocol.tokens`` and
``darktower.protocol.ratelimit``.
"""

from darktower.protocol import pb
from darktower.protocol._bounds import (
    CLIENT_FIELD_BOUNDS,
    REASON_BAD_VALUE,
    REASON_FIELD_TOO_LARGE,
    Bound,
    check_bounds,
    unbounded_fields,
)
from darktower.protocol._enums import (
    error_code_from_pb,
    error_code_to_pb,
    leave_reason_from_pb,
    leave_reason_to_pb,
    stream_type_from_pb,
    stream_type_to_pb,
)
from darktower.protocol._error_table import (
    ERROR_TABLE,
    INTERNAL_ERROR_MESSAGE,
    PEER_CODE_DETAIL,
    RETRY_AFTER_DETAIL,
    ErrorSpec,
    GrpcStatus,
    UnknownError,
    code_from_grpc_status,
    code_from_name,
    error_body,
    error_from_body,
    error_from_message,
    error_message,
    error_name,
    grpc_status,
    http_status,
    make_error,
    wire_details,
    wire_error,
)
from darktower.protocol._framing import (
    MAX_MESSAGE_SIZE,
    MAX_VARINT_LEN,
    REASON_BAD_VARINT,
    REASON_TOO_LARGE,
    REASON_TRUNCATED,
    REASON_UNDECODABLE,
    MessageDecoder,
    encode_message,
    encode_varint,
)
from darktower.protocol.close_codes import (
    SESSION_CLOSE_CODE_BASE,
    close_code_for,
    reason_from_close_code,
)
from darktower.protocol.pb.v1.common_pb2 import ErrorMessage
from darktower.protocol.pb.v1.signaling_pb2 import ClientMessage, ServerMessage
from darktower.protocol.versions import (
    PROTOCOL_VERSION,
    SUPPORTED_VERSIONS,
    check_version,
    version_of,
)

__all__ = [
    "CLIENT_FIELD_BOUNDS",
    "ERROR_TABLE",
    "INTERNAL_ERROR_MESSAGE",
    "MAX_MESSAGE_SIZE",
    "MAX_VARINT_LEN",
    "PEER_CODE_DETAIL",
    "PROTOCOL_VERSION",
    "REASON_BAD_VALUE",
    "REASON_BAD_VARINT",
    "REASON_FIELD_TOO_LARGE",
    "REASON_TOO_LARGE",
    "REASON_TRUNCATED",
    "REASON_UNDECODABLE",
    "RETRY_AFTER_DETAIL",
    "SESSION_CLOSE_CODE_BASE",
    "SUPPORTED_VERSIONS",
    "Bound",
    "ClientMessage",
    "ErrorMessage",
    "ErrorSpec",
    "GrpcStatus",
    "MessageDecoder",
    "ServerMessage",
    "UnknownError",
    "check_bounds",
    "check_version",
    "close_code_for",
    "code_from_grpc_status",
    "code_from_name",
    "encode_message",
    "encode_varint",
    "error_body",
    "error_code_from_pb",
    "error_code_to_pb",
    "error_from_body",
    "error_from_message",
    "error_message",
    "error_name",
    "grpc_status",
    "http_status",
    "leave_reason_from_pb",
    "leave_reason_to_pb",
    "make_error",
    "pb",
    "reason_from_close_code",
    "stream_type_from_pb",
    "stream_type_to_pb",
    "unbounded_fields",
    "version_of",
    "wire_details",
    "wire_error",
]
