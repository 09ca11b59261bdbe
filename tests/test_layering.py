"""Imports flow one way: bytes -> protocol -> I/O -> supervision -> services.

The rule: docs/architecture.md §2.
"""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import pytest

PACKAGE = pathlib.Path(__file__).parent.parent / "darktower"

# Lower rank never imports higher rank.
RANK = {
    "darktower.errors": 0,
    "darktower.model": 0,
    "darktower.frames": 1,
    "darktower.protocol": 2,
    "darktower.transport": 3,
    "darktower.nurseries": 4,
    # What the three services share (TLS, addresses, ops listener, staying registered).
    "darktower.servicekit": 4,
    "darktower.global_controller": 5,
    "darktower.meeting_controller": 5,
    "darktower.media_handler": 5,
    "darktower.client": 5,
    # Tools built on the client: nothing below imports them.
    "darktower.loadtest": 6,
}
# Sans-IO layers never touch these.
IO_MODULES = {"trio", "trio_asyncio", "asyncio", "socket", "ssl", "selectors", "aioquic", "grpclib"}
SANS_IO = ("darktower.frames", "darktower.protocol")
# Generated grpclib service stubs live beside the messages they serve, but only the transport
# layer imports them; darktower.protocol itself never loads them (see the test below).
GRPC_STUB_SUFFIX = "_grpc"
GRPC_STUB_PACKAGE = "darktower.protocol.pb."


def _layer(module: str) -> str | None:
    for name in sorted(RANK, key=len, reverse=True):
        if module == name or module.startswith(name + "."):
            return name
    return None


def _modules() -> list[tuple[str, pathlib.Path]]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        out.append((".".join(parts), path))
    return out


def _imports(module: str, path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()
    is_pkg = path.name == "__init__.py"
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base if is_pkg else base[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return found


def test_imports_flow_one_way() -> None:
    violations = []
    for module, path in _modules():
        own = _layer(module)
        if own is None:
            continue
        for imported in _imports(module, path):
            other = _layer(imported)
            if other is not None and RANK[other] > RANK[own]:
                violations.append(f"{module} imports {imported}")
            is_stub = module.startswith(GRPC_STUB_PACKAGE) and module.endswith(GRPC_STUB_SUFFIX)
            if own in SANS_IO and imported.split(".")[0] in IO_MODULES and not is_stub:
                violations.append(f"{module} (sans-IO) imports {imported}")
    assert violations == []


def test_layering_sees_the_layers() -> None:
    # The check above is only worth something if it parses real modules.
    names = {m for m, _ in _modules()}
    assert {"darktower.frames", "darktower.protocol", "darktower.errors"} <= names


@pytest.mark.parametrize("package", SANS_IO)
def test_sans_io_packages_load_without_io(package: str) -> None:
    code = (
        f"import sys, {package}\n"
        f"bad = sorted(m for m in {sorted(IO_MODULES)!r} if m in sys.modules)\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
