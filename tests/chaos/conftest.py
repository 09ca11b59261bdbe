"""The ``chaos`` marker: a long randomized fault schedule against the services as processes,
run by ``nox -s chaos`` (which sets ``DARKTOWER_CHAOS=1``), skipped by the default test run
(docs/architecture.md §9)."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "chaos: a long randomized fault schedule (nox -s chaos; else skipped)"
    )
