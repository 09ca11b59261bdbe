"""What the hostile checker tried, how the services reacted, and who is alive afterwards."""

from __future__ import annotations

from typing import Any

import attrs

from ._flood import FloodResult
from ._probes import Check, JoinResult
from ._tally import Tally


@attrs.define
class Report:
    seed: int
    tallies: list[Tally] = attrs.field(factory=list)
    after_phase: dict[str, list[Check]] = attrs.field(factory=dict)
    checks: list[Check] = attrs.field(factory=list)
    flood: FloodResult | None = None
    join_under_flood: JoinResult | None = None
    notes: list[str] = attrs.field(factory=list)

    @property
    def cases(self) -> int:
        return sum(t.cases for t in self.tallies)

    @property
    def fuzz_seconds(self) -> float:
        return sum(t.seconds for t in self.tallies)

    @property
    def cases_per_s(self) -> float:
        return self.cases / self.fuzz_seconds if self.fuzz_seconds else 0.0

    @property
    def dead(self) -> list[str]:
        return [c.name for c in self.checks if not c.alive]

    @property
    def ok(self) -> bool:
        return bool(self.checks) and not self.dead

    def text(self) -> str:
        lines = [f"hostile traffic (seed {self.seed}):"]
        for tally in self.tallies:
            lines.append("  " + tally.line())
            after = self.after_phase.get(tally.phase, [])
            down = [c.name for c in after if not c.alive]
            lines.append(
                f"    then: {'no answer from ' + ', '.join(down) if down else 'TCP listeners answer'}"
            )
        if self.flood is not None:
            joined = self.join_under_flood
            how = (
                f"{joined.seconds * 1000:.0f} ms"
                if joined is not None and joined.seconds is not None
                else f"failed ({joined.mc.detail if joined else '?'}; {joined.mh.detail if joined else ''})"
            )
            lines.append(
                f"  flood: {self.flood.per_s:.0f} Initials/s achieved; a legitimate join under it: {how}"
            )
        lines += [f"  note: {n}" for n in self.notes]
        lines.append(
            f"{self.cases} malformed inputs in {self.fuzz_seconds:.1f} s ({self.cases_per_s:.0f}/s)"
        )
        lines.append("services afterwards:")
        lines += ["  " + c.line() for c in self.checks]
        lines.append("ALL ALIVE" if self.ok else f"DEAD: {', '.join(self.dead)}")
        return "\n".join(lines)

    def summary(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "seed": self.seed,
            "cases": self.cases,
            "cases_per_s": self.cases_per_s,
            "dead": self.dead,
            "flood_initials_per_s": self.flood.per_s if self.flood else None,
            "phases": {t.phase: t.cases for t in self.tallies},
            "checks": {c.name: {"alive": c.alive, "detail": c.detail} for c in self.checks},
        }
