"""Log lines: a field from the network cannot forge a line or a field (text and JSON modes)."""

from __future__ import annotations

import json
import logging
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from darktower.logs import JsonFormatter, TextFormatter, fields
from tests._fuzz import fuzz_settings

# Newlines, carriage return, ANSI colour and cursor movement, other C0 and C1 controls, DEL,
# and Unicode's line and paragraph separators.
HOSTILE = [
    "mallory\ninfo    darktower.gc: client removed id=admin",
    "mallory\r\x1b[2Kinfo    darktower.gc: all good",
    "\x1b[31mred\x1b[0m",
    "nul\x00bell\x07bs\x08vt\x0bff\x0c",
    "del\x7f c1\x85\x9b31m",
    "line\u2028sep\u2029para",
]


def _record(msg_: str = "participant joined", /, **values: object) -> logging.LogRecord:
    record = logging.LogRecord("darktower.mc", logging.INFO, __file__, 1, msg_, None, None)
    record.fields = fields(**values)["fields"]
    return record


def _controls(text: str) -> list[str]:
    return [c for c in text if ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F or c in "\u2028\u2029"]


@pytest.mark.parametrize("value", HOSTILE)
def test_text_mode_escapes_control_characters_in_fields(value: str) -> None:
    line = TextFormatter().format(_record(name=value, path=value, **{value: 1}))
    assert _controls(line) == []
    assert "\n" not in line and "\r" not in line and "\x1b" not in line


@pytest.mark.parametrize("value", HOSTILE)
def test_text_mode_escapes_control_characters_in_the_message(value: str) -> None:
    line = TextFormatter().format(_record(f"joined as {value}"))
    assert _controls(line) == []


def test_text_mode_escapes_are_readable_and_unambiguous() -> None:
    line = TextFormatter().format(_record(name="a\nb\x1b[0m\\n", n=3))
    assert line == "info    darktower.mc: participant joined name=a\\nb\\x1b[0m\\\\n n=3"


def test_a_value_cannot_forge_another_field() -> None:
    line = TextFormatter().format(_record(name="bob level=error admin=true", n=1))
    assert line.endswith(' name="bob level=error admin=true" n=1')
    line = TextFormatter().format(_record(name='x" admin="true'))
    assert line.endswith(' name="x\\" admin=\\"true"')
    assert TextFormatter().format(_record(name="")).endswith(' name=""')


def test_text_mode_keeps_plain_values_plain() -> None:
    line = TextFormatter().format(_record(meeting="m-1", port=4433, url="https://h:1/v1"))
    assert (
        line == "info    darktower.mc: participant joined meeting=m-1 port=4433 url=https://h:1/v1"
    )


def test_text_mode_traceback_lines_cannot_pass_for_log_lines() -> None:
    try:
        raise ValueError("bad name\ninfo    darktower.gc: forged\x1b[2K")
    except ValueError:
        record = _record()
        record.exc_info = sys.exc_info()
    first, *rest = TextFormatter().format(record).split("\n")
    assert first == "info    darktower.mc: participant joined"
    assert rest and all(line.startswith("    ") for line in rest)
    assert "\x1b" not in "".join(rest)


@pytest.mark.parametrize("value", HOSTILE)
def test_json_mode_is_one_line_and_round_trips(value: str) -> None:
    line = JsonFormatter().format(_record(f"joined {value}", name=value))
    assert _controls(line) == []
    decoded = json.loads(line)
    assert decoded["name"] == value and decoded["msg"] == f"joined {value}"


@pytest.mark.fuzz
@fuzz_settings()
@given(value=st.text(), key=st.text(min_size=1))
def test_no_field_value_makes_a_second_text_line(value: str, key: str) -> None:
    line = TextFormatter().format(_record(value, **{key: value}))
    assert _controls(line) == []
    assert JsonFormatter().format(_record(value, **{key: value})).count("\n") == 0
