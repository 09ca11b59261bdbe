"""The browser client's copies of the wire constants agree with the Python ones: the close-code
base (docs/protocol.md §9), the LeaveReason values and the protocol version (§12). Plain Python reading the JS source; no
browser needed."""

from __future__ import annotations

import pathlib
import re

from darktower.model import LeaveReason
from darktower.protocol import PROTOCOL_VERSION, SESSION_CLOSE_CODE_BASE

WEB = pathlib.Path(__file__).parents[2] / "darktower" / "web"
_NUMBER = r"(0x[0-9a-fA-F]+|\d+)"


def const(source: str, name: str) -> int:
    """The value of ``export const NAME = <integer literal>;`` in ``source``."""
    found = re.findall(rf"^export const {name} = {_NUMBER};$", source, re.MULTILINE)
    assert len(found) == 1, f"{name}: {found}"
    return int(found[0], 0)


def frozen_enum(source: str, name: str) -> dict[str, int]:
    """The members of ``export const NAME = Object.freeze({ KEY: <integer>, ... });``."""
    found = re.findall(
        rf"^export const {name} = Object\.freeze\(\{{(.*?)\}}\);$", source, re.MULTILINE | re.DOTALL
    )
    assert len(found) == 1, f"{name}: {found}"
    members = re.findall(rf"(\w+):\s*{_NUMBER}\s*,?", found[0])
    assert members, name
    return {key: int(value, 0) for key, value in members}


def test_the_session_close_code_base_is_the_protocols_and_defined_once() -> None:
    assert const((WEB / "session.js").read_text(), "SESSION_CLOSE_CODE_BASE") == (
        SESSION_CLOSE_CODE_BASE
    )
    # No other copy of the base on the page (docs/protocol.md §9): every use goes through it.
    literals = {hex(SESSION_CLOSE_CODE_BASE), str(SESSION_CLOSE_CODE_BASE)}
    copies = [
        (path.name, line)
        for path in sorted(WEB.glob("*.js"))
        for line in path.read_text().splitlines()
        if any(re.search(rf"\b{x}\b", line, re.IGNORECASE) for x in literals)
    ]
    assert [name for name, _ in copies] == ["session.js"], copies


def test_the_pages_leave_reasons_are_the_models() -> None:
    proto = (WEB / "proto.js").read_text()
    # proto.js re-exports the enum of its field tables; the values live in schema.js.
    assert re.search(
        r'^import \{[^}]*\bLeaveReason\b[^}]*\} from "\./schema\.js";$', proto, re.MULTILINE
    )
    assert re.search(r"^export \{[^}]*\bLeaveReason\b[^}]*\};$", proto, re.MULTILINE)
    page = frozen_enum((WEB / "schema.js").read_text(), "LeaveReason")
    assert page == {reason.name: int(reason) for reason in LeaveReason}


def test_the_page_speaks_the_protocols_version() -> None:
    assert const((WEB / "proto.js").read_text(), "PROTOCOL_VERSION") == PROTOCOL_VERSION
    # Both ways the page sends a ClientMessage go through the one encoder that stamps it.
    signaling = (WEB / "signaling.js").read_text()
    assert "protocolVersion: PROTOCOL_VERSION" in signaling
    built = re.findall(r"encodeDelimited\(\s*\"ClientMessage\"", signaling)
    assert len(built) == 1, built
    assert not any(
        'encodeDelimited("ClientMessage"' in path.read_text()
        for path in WEB.glob("*.js")
        if path.name != "signaling.js"
    )
