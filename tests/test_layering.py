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
    # Codecs, muxers and mixing over PyAV (docs/architecture.md §10): sans-IO, no trio.
    "darktower.processing": 2,
    # End-to-end encryption of frames and key shares (docs/protocol.md §16): sans-IO.
    "darktower.e2ee": 2,
    "darktower.transport": 3,
    "darktower.nurseries": 4,
    # What the three services share (TLS, addresses, ops listener, staying registered).
    "darktower.servicekit": 4,
    "darktower.global_controller": 5,
    "darktower.meeting_controller": 5,
    "darktower.media_handler": 5,
    "darktower.client": 5,
    "darktower.media_processor": 5,
    # Tools built on the client: nothing below imports them.
    "darktower.loadtest": 6,
}
# Sans-IO layers never touch these.
IO_MODULES = {"trio", "trio_asyncio", "asyncio", "socket", "ssl", "selectors", "aioquic", "grpclib"}
SANS_IO = ("darktower.frames", "darktower.protocol", "darktower.processing", "darktower.e2ee")
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


def _runtime_imports(module: str, path: pathlib.Path, known: set[str]) -> set[str]:
    """The darktower modules ``module`` imports when it is loaded.

    Imports under ``if TYPE_CHECKING:`` and inside functions do not run at load time and are
    left out; ``from pkg import submodule`` is an edge to the submodule, not to the package.
    """
    is_pkg = path.name == "__init__.py"
    found: set[str] = set()

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                visit(node.orelse)
            elif isinstance(node, (ast.If, ast.With)):
                visit(node.body)
                visit(getattr(node, "orelse", []))
            elif isinstance(node, ast.Try):
                visit(node.body)
                visit(node.orelse)
                visit(node.finalbody)
                for handler in node.handlers:
                    visit(handler.body)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = module.split(".") if is_pkg else module.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                subs = {f"{target}.{a.name}" for a in node.names} & known
                found.update(subs)
                if len(subs) < len(node.names):
                    found.add(target)

    visit(ast.parse(path.read_text(), str(path)).body)
    return (found & known) - {module}


def test_no_runtime_import_cycle() -> None:
    modules = dict(_modules())
    known = set(modules)
    graph = {m: _runtime_imports(m, p, known) for m, p in modules.items()}
    # Depth-first search for a back edge; a package importing its own submodules is the
    # normal shape, a submodule importing its package (or a sibling importing back) is not.
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    cycles: list[list[str]] = []

    def walk(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                walk(nxt, [*path, nxt])
        state[node] = 2

    for start in sorted(graph):
        if start not in state:
            walk(start, [start])
    assert cycles == []


def test_the_cycle_check_sees_a_cycle(tmp_path: pathlib.Path) -> None:
    a = tmp_path / "a.py"
    a.write_text("from pkg import b\n")
    assert _runtime_imports("pkg.a", a, {"pkg", "pkg.a", "pkg.b"}) == {"pkg.b"}
    a.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import c\n")
    assert _runtime_imports("pkg.a", a, {"pkg", "pkg.a", "pkg.c"}) == set()
    a.write_text("from pkg import Thing\n")
    assert _runtime_imports("pkg.a", a, {"pkg", "pkg.a"}) == {"pkg"}
