"""What one phase of the hostile checker tried, and how the services reacted to each case."""

from __future__ import annotations

import collections

import attrs


@attrs.define
class Tally:
    """Cases delivered in one phase: by kind, and by the service's reaction (outcome)."""

    phase: str
    cases: int = 0
    seconds: float = 0.0
    kinds: collections.Counter[str] = attrs.field(factory=collections.Counter)
    outcomes: collections.Counter[str] = attrs.field(factory=collections.Counter)
    errors: collections.Counter[str] = attrs.field(factory=collections.Counter)

    def record(self, kind: str, outcome: str = "sent") -> None:
        self.cases += 1
        self.kinds[kind] += 1
        self.outcomes[outcome] += 1

    def failed(self, kind: str, error: BaseException | str) -> None:
        """A case that could not be delivered (e.g. the connection was refused): not counted."""
        name = error if isinstance(error, str) else type(error).__name__
        self.errors[f"{kind}: {name}"] += 1

    def line(self) -> str:
        def top(counter: collections.Counter[str], n: int = 6) -> str:
            items = counter.most_common(n)
            more = len(counter) - len(items)
            text = ", ".join(f"{k} {v}" for k, v in items)
            return text + (f", +{more} more" if more > 0 else "")

        text = f"{self.phase}: {self.cases} cases in {self.seconds:.1f} s ({len(self.kinds)} kinds)"
        if self.outcomes:
            text += f"; reactions: {top(self.outcomes)}"
        if self.errors:
            text += f"; not delivered: {top(self.errors, 3)}"
        return text
