"""Fixtures shared by the whole suite: a throwaway PostgreSQL server (tests/_postgres.py); the
collector's permanent generation for what collection built."""

import gc

import pytest

pytest_plugins = ["tests._postgres"]


def pytest_collection_finish(session: pytest.Session) -> None:
    """Every module, class and function collected moves to the collector's permanent
    generation, as a service freezes its start-up objects (darktower/launch.py). A full
    collection then scans only what the tests allocate: without it, each one stopped the test
    process for 100-130 ms (150,000 objects, a quarter of the suite), and on a loaded machine
    such a pause can hold a frame in a test's in-process stack past the MH's age bound (200 ms
    for audio, docs/architecture.md §5.4), which drops it."""
    gc.collect()
    gc.freeze()
