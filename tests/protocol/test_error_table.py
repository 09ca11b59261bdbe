"""One table from ErrorCode to HTTP status, JSON name, gRPC status and exception class."""

from __future__ import annotations

import json

import grpclib.const
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from darktower import errors
from darktower.errors import DarkTowerError, ErrorCode, RateLimited
from darktower.protocol import (
    ERROR_TABLE,
    INTERNAL_ERROR_MESSAGE,
    PEER_CODE_DETAIL,
    RETRY_AFTER_DETAIL,
    ErrorMessage,
    GrpcStatus,
    ServerMessage,
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
    wire_error,
)

# The contract's list of HTTP error codes, plus the two protobuf-only codes (task brief).
EXPECTED_HTTP = {
    "INVALID_REQUEST": 400,
    "UNAUTHORIZED": 401,
    "FORBIDDEN": 403,
    "NOT_FOUND": 404,
    "CONFLICT": 409,
    "RATE_LIMITED": 429,
    "INTERNAL_ERROR": 500,
    "CAPACITY_EXCEEDED": 503,
    "STREAM_ERROR": 500,
    "UNKNOWN": 500,
}
EXPECTED_GRPC = {
    ErrorCode.UNKNOWN: grpclib.const.Status.UNKNOWN,
    ErrorCode.INVALID_REQUEST: grpclib.const.Status.INVALID_ARGUMENT,
    ErrorCode.UNAUTHORIZED: grpclib.const.Status.UNAUTHENTICATED,
    ErrorCode.FORBIDDEN: grpclib.const.Status.PERMISSION_DENIED,
    ErrorCode.NOT_FOUND: grpclib.const.Status.NOT_FOUND,
    ErrorCode.CONFLICT: grpclib.const.Status.ALREADY_EXISTS,
    ErrorCode.INTERNAL_ERROR: grpclib.const.Status.INTERNAL,
    ErrorCode.CAPACITY_EXCEEDED: grpclib.const.Status.UNAVAILABLE,
    ErrorCode.STREAM_ERROR: grpclib.const.Status.ABORTED,
    ErrorCode.RATE_LIMITED: grpclib.const.Status.RESOURCE_EXHAUSTED,
}

texts = st.text(max_size=30)
detail_maps = st.dictionaries(
    texts.filter(lambda k: k not in (RETRY_AFTER_DETAIL, PEER_CODE_DETAIL)), texts, max_size=4
)


def test_table_is_total_and_consistent() -> None:
    assert set(ERROR_TABLE) == set(ErrorCode)
    for code, spec in ERROR_TABLE.items():
        assert spec.code is code
        assert spec.name == code.name  # the contract's names are the enum's
        assert spec.exception.code is code
        assert 400 <= spec.http_status <= 599
    assert len({spec.name for spec in ERROR_TABLE.values()}) == len(ErrorCode)


def test_http_statuses_and_names() -> None:
    assert {error_name(code): http_status(code) for code in ErrorCode} == EXPECTED_HTTP


def test_every_error_class_has_its_row() -> None:
    classes = {
        obj
        for obj in vars(errors).values()
        if isinstance(obj, type) and issubclass(obj, DarkTowerError) and obj is not DarkTowerError
    }
    assert classes | {UnknownError} == {spec.exception for spec in ERROR_TABLE.values()}


def test_grpc_status_mirrors_grpclib() -> None:
    assert {s.name: s.value for s in GrpcStatus} == {s.name: s.value for s in grpclib.const.Status}


def test_grpc_statuses_are_grpclibs_and_distinct() -> None:
    assert {code: grpclib.const.Status(grpc_status(code)) for code in ErrorCode} == EXPECTED_GRPC
    for code in ErrorCode:
        assert code_from_grpc_status(grpc_status(code)) is code
    assert code_from_grpc_status(grpclib.const.Status.CANCELLED.value) is ErrorCode.UNKNOWN
    assert code_from_grpc_status(grpclib.const.Status.OK.value) is ErrorCode.UNKNOWN


def test_names_round_trip() -> None:
    for code in ErrorCode:
        assert code_from_name(error_name(code)) is code
    assert code_from_name("MEETING_NOT_FOUND") is ErrorCode.UNKNOWN


def _instance(code: ErrorCode, message: str, details: dict[str, str]) -> DarkTowerError:
    cls = ERROR_TABLE[code].exception
    if cls is RateLimited:
        return RateLimited(message, retry_after_s=1.5, details=details)
    return cls(message, details=details)


def _assert_same(got: DarkTowerError, sent: DarkTowerError) -> None:
    assert type(got) is type(sent)
    assert got.code is sent.code
    assert got.message == sent.message
    expected = dict(sent.details)
    if isinstance(sent, RateLimited):
        assert isinstance(got, RateLimited)
        assert got.retry_after_s == sent.retry_after_s
        expected[RETRY_AFTER_DETAIL] = repr(sent.retry_after_s)
    assert got.details == expected


@pytest.mark.parametrize("code", list(ErrorCode))
@settings(max_examples=25)  # x10 codes
@given(message=texts, details=detail_maps)
def test_error_message_round_trip(code: ErrorCode, message: str, details: dict[str, str]) -> None:
    sent = _instance(code, message, details)
    pb_message = error_message(sent)
    assert pb_message.code == code.value
    # Through the wire, inside the signaling envelope.
    envelope = ServerMessage.FromString(
        ServerMessage(request_id=4, error=pb_message).SerializeToString()
    )
    _assert_same(error_from_message(envelope.error), sent)


@pytest.mark.parametrize("code", list(ErrorCode))
@settings(max_examples=25)  # x10 codes
@given(message=texts, details=detail_maps)
def test_error_body_round_trip(code: ErrorCode, message: str, details: dict[str, str]) -> None:
    sent = _instance(code, message, details)
    body = json.loads(json.dumps(error_body(sent)))
    assert set(body) == {"error"}
    assert body["error"]["code"] == code.name
    assert body["error"]["message"] == message
    _assert_same(error_from_body(body), sent)


def test_error_body_matches_the_contract_example_shape() -> None:
    body = error_body(errors.NotFound("Meeting 550e8400 does not exist"))
    assert body == {
        "error": {"code": "NOT_FOUND", "message": "Meeting 550e8400 does not exist", "details": {}}
    }
    assert http_status(errors.NotFound.code) == 404


def test_unknown_codes_from_a_newer_peer_are_kept() -> None:
    received = error_from_message(ErrorMessage(code=42, message="new"))  # type: ignore[arg-type]
    assert isinstance(received, UnknownError)
    assert received.details == {PEER_CODE_DETAIL: "42"}
    from_body = error_from_body({"error": {"code": "MEETING_NOT_FOUND", "message": "m"}})
    assert isinstance(from_body, UnknownError)
    assert from_body.details == {PEER_CODE_DETAIL: "MEETING_NOT_FOUND"}


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"error": "x"},
        {"error": {"message": "no code"}},
        {"error": {"code": "NOT_FOUND", "details": []}},
    ],
)
def test_malformed_error_body(body: dict[str, object]) -> None:
    with pytest.raises(errors.InvalidRequest):
        error_from_body(body)


@pytest.mark.parametrize("text", ["soon", "-3", "nan", "inf"])
def test_bad_retry_after_reads_as_zero(text: str) -> None:
    received = make_error(ErrorCode.RATE_LIMITED, "slow down", {RETRY_AFTER_DETAIL: text})
    assert isinstance(received, RateLimited)
    assert received.retry_after_s == 0.0


def test_wire_error_hides_foreign_exceptions() -> None:
    hidden = wire_error(ValueError("password=hunter2"))
    assert isinstance(hidden, errors.InternalError)
    assert hidden.message == INTERNAL_ERROR_MESSAGE
    assert "hunter2" not in json.dumps(error_body(hidden))
    conflict = errors.Conflict("taken")
    assert wire_error(conflict) is conflict
