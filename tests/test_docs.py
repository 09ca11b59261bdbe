"""The repository is self-contained: comments cite only its own docs, and those citations hold.

Code and tests cite ``docs/architecture.md §n``, ``docs/protocol.md §n`` or a
``docs/decisions.md`` entry by its title, never a document outside the repository.
"""

from __future__ import annotations

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).parent.parent
DOCS = ROOT / "docs"
SCANNED = ("darktower", "tests", "benchmarks", "examples", "proto", "scripts")
SUFFIXES = {".proto", ".py", ".pyi", ".js", ".html", ".css", ".md", ".txt", ".toml", ".cfg", ".sh"}
# Generated from proto/ by scripts/gen_proto.py: its text is the .proto files' comments.
GENERATED = ("darktower/protocol/pb/",)
THIS = pathlib.Path(__file__).resolve()

# Documents that are not in the repository, by the ways code has cited them.
OUTSIDE = re.compile(
    r"STYLE \d|DESIGN|(?i:contract §|contract \d|contract section|api-contracts)|/work/shared"
    r"|shared/(?:STYLE|DESIGN)"
)
CITATION = re.compile(r"docs/(\w+)\.md §(\d+(?:\.\d+)*)")
DECISION = re.compile(r'docs/decisions\.md, "([^"]+)"')
HEADING = re.compile(r"^#+ §(\d+(?:\.\d+)*) ", re.MULTILINE)


def _files() -> list[pathlib.Path]:
    out = []
    for top in SCANNED:
        for path in sorted((ROOT / top).rglob("*")):
            rel = path.relative_to(ROOT).as_posix()
            if (
                path.is_file()
                and path.suffix in SUFFIXES
                and path.resolve() != THIS
                and not rel.startswith(GENERATED)
                and "__pycache__" not in path.parts
            ):
                out.append(path)
    return out


def _sections(doc: str) -> set[str]:
    path = DOCS / f"{doc}.md"
    return set(HEADING.findall(path.read_text())) if path.exists() else set()


def _decisions() -> list[str]:
    text = (DOCS / "decisions.md").read_text()
    return [line[3:].strip() for line in text.splitlines() if line.startswith("## ")]


def test_the_scan_sees_the_code() -> None:
    names = {p.relative_to(ROOT).as_posix() for p in _files()}
    assert {"darktower/nurseries/__init__.py", "darktower/web/session.js"} <= names


def test_no_citation_of_documents_outside_the_repository() -> None:
    found = []
    for path in _files():
        rel = path.relative_to(ROOT).as_posix()
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if OUTSIDE.search(line):
                found.append(f"{rel}:{number}: {line.strip()}")
    assert found == []


@pytest.mark.parametrize("doc", ["architecture", "protocol"])
def test_docs_number_their_sections(doc: str) -> None:
    assert "1" in _sections(doc)


def test_every_section_citation_names_a_section_that_exists() -> None:
    sections: dict[str, set[str]] = {}
    bad = []
    for path in [*_files(), *sorted(DOCS.glob("*.md"))]:
        rel = path.relative_to(ROOT).as_posix()
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            for doc, section in CITATION.findall(line):
                if doc not in sections:
                    sections[doc] = _sections(doc)
                if section not in sections[doc]:
                    bad.append(f"{rel}:{number}: docs/{doc}.md §{section}")
    assert bad == []


def test_every_decision_citation_names_an_entry() -> None:
    titles = _decisions()
    bad = []
    for path in _files():
        rel = path.relative_to(ROOT).as_posix()
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            for title in DECISION.findall(line):
                if not any(title in t for t in titles):
                    bad.append(f"{rel}:{number}: {title!r}")
    assert bad == []
