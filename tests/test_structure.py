"""Shapes the codebase keeps (docs/architecture.md §7): classes that own their work, modules of
one concept.

* No class is named ``*Mixin`` and none casts ``self`` to another class: behaviour is composed
  from objects passed in, not sliced into bases that assume what the subclass has.
* No hand-written module is over :data:`MAX_MODULE_LINES` lines (generated code aside): a module
  that grows past that holds more than one concept and is split by concept. This holds for the
  package, the page's scripts (darktower/web/*.js), the tests and the benchmarks.
"""

from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).parent.parent
PACKAGE = ROOT / "darktower"
GENERATED = PACKAGE / "protocol" / "pb"
WEB = PACKAGE / "web"
MAX_MODULE_LINES = 500


def _sources() -> list[pathlib.Path]:
    return [p for p in sorted(PACKAGE.rglob("*.py")) if GENERATED not in p.parents]


def _all_modules() -> list[pathlib.Path]:
    """Every hand-written module the line limit applies to."""
    others = [
        *sorted(WEB.glob("*.js")),
        *sorted((ROOT / "tests").rglob("*.py")),
        *sorted((ROOT / "benchmarks").glob("*.py")),
    ]
    return _sources() + others


def test_the_scan_sees_the_package() -> None:
    names = {p.name for p in _sources()}
    assert {"errors.py", "model.py", "__main__.py"} <= names
    assert not any(GENERATED in p.parents for p in _sources())
    scanned = {str(p.relative_to(ROOT)) for p in _all_modules()}
    assert {
        "darktower/web/session.js",
        "tests/test_structure.py",
        "tests/browser/test_session.py",
        "benchmarks/resume.py",
        "benchmarks/_bench.py",
    } <= scanned


def test_no_mixin_and_no_cast_of_self() -> None:
    found = []
    for path in _sources():
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and node.name.endswith("Mixin"):
                found.append(f"{path.name}: class {node.name}")
            if (
                isinstance(node, ast.Call)
                and ast.unparse(node.func).split(".")[-1] == "cast"
                and len(node.args) == 2
                and ast.unparse(node.args[1]) == "self"
            ):
                found.append(f"{path.name}:{node.lineno}: {ast.unparse(node)}")
    assert found == []


def test_no_module_over_the_line_limit() -> None:
    long = {
        str(p.relative_to(ROOT)): n
        for p in _all_modules()
        if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert long == {}
