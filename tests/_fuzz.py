"""Budgets for the fuzz properties (hypothesis) of every parser the network reaches.

The default test run gives each property a short budget; ``nox -s fuzz`` sets
``DARKTOWER_FUZZ=long`` and repeats the ``fuzz``-marked tests with new seeds for a fixed time
(ten minutes by default: rounds of five times the default budgets, each with a new seed), printing hypothesis' statistics of what it tried.

Use ``@fuzz_settings()`` on a hypothesis property (never a bare ``max_examples``), and
``fuzz_cases()`` / ``fuzz_rng()`` for a seeded loop that throws generated input at a live
service over real sockets (where one hypothesis example per trio run would be too slow).
"""

from __future__ import annotations

import os
import random

from hypothesis import HealthCheck, settings

LONG = os.environ.get("DARKTOWER_FUZZ") == "long"
# Examples per property in the default run, and how many times more in a long run.
DEFAULT_EXAMPLES = 150
LONG_FACTOR = 5


def fuzz_settings(examples: int = DEFAULT_EXAMPLES) -> settings:
    """Hypothesis settings of a fuzz property: ``examples`` by default, 5 times as many in a long run."""
    return settings(
        max_examples=examples * (LONG_FACTOR if LONG else 1),
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
        derandomize=False,
    )


def fuzz_cases(default: int = 200) -> int:
    """How many generated inputs a live-service fuzz loop sends (5 times as many in a long run)."""
    return default * (LONG_FACTOR if LONG else 1)


def fuzz_rng(name: str) -> random.Random:
    """A seeded generator for a live-service fuzz loop; the seed is printed so a failure can be
    replayed with ``DARKTOWER_FUZZ_SEED``."""
    seed = int(os.environ.get("DARKTOWER_FUZZ_SEED", random.randrange(2**32)))
    print(f"fuzz {name}: seed {seed}")
    return random.Random(seed)
