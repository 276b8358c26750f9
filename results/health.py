"""Run health: units whose numbers do not mean what a complete unit's numbers mean.

A unit with a material share of its requests ``unfinished`` (a live run cut by
``--max-duration``, a simulation whose ``drain_s`` ended with requests in flight)
reports latencies over the requests that did finish (the faster ones: the slow
ones are the unfinished) and a goodput lowered by the cut rather than by the
strategy. Such a unit is *incomplete*: the terminal table and the report warn
about it prominently, and its strategy is not ranked at that grid point (ranking
it would compare how much of each strategy's traffic the cut hid).

The threshold is one percent: above it, a p99 latency can be entirely made of
requests that were never measured.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

#: A unit with more than this share of its requests unfinished is incomplete.
INCOMPLETE_SHARE = 0.01

_COLUMNS = ["point_id", "strategy", "seed", "num_requests", "num_unfinished", "unfinished_share"]


@dataclass(slots=True)
class RunHealth:
    """The incomplete units of a run (one row each) and what that means for ranking."""

    incomplete: pd.DataFrame  # columns: _COLUMNS
    mode: str = "sim"
    max_duration_s: float | None = None

    @property
    def ok(self) -> bool:
        return self.incomplete.empty

    def unranked(self) -> set[tuple[str, str]]:
        """(point_id, strategy) pairs with at least one incomplete unit: not ranked."""
        return set(zip(self.incomplete["point_id"], self.incomplete["strategy"]))

    def advice(self) -> str:
        """What to change so the units finish."""
        if self.mode == "live" and self.max_duration_s:
            return (f"raise --max-duration (the run was cut at {self.max_duration_s:g} s) or send "
                    "fewer requests (--max-requests, num_requests)")
        if self.mode == "live":
            return "raise --timeout (or router.timeout_s) and drain_s, or lower the load"
        return "raise drain_s (simulated seconds allowed after the last arrival) or lower the load"

    def warnings(self, labels: dict[str, str] | None = None) -> list[str]:
        """Plain-text warning lines (empty when every unit is complete)."""
        if self.ok:
            return []
        labels = labels or {}
        df = self.incomplete
        worst = df.sort_values("unfinished_share", ascending=False).iloc[0]
        lines = [
            f"WARNING: {len(df)} unit(s) have more than {INCOMPLETE_SHARE:.0%} of their requests "
            f"unfinished (worst: {worst.unfinished_share:.0%} of {int(worst.num_requests):,} in "
            f"{labels.get(worst.point_id, worst.point_id)} / {worst.strategy} / seed "
            f"{int(worst.seed)}).",
            "  Their latencies cover only the requests that finished and their goodput fell "
            "because of the cut, so those strategies are NOT ranked at those points.",
            f"  To get complete units, {self.advice()}.",
        ]
        pairs = df.groupby(["point_id", "strategy"], sort=False)["unfinished_share"].max()
        shown = [f"{labels.get(p, p)} / {s} ({share:.0%})" for (p, s), share in pairs.items()]
        more = f", ... {len(shown) - 6} more" if len(shown) > 6 else ""
        lines.append("  Not ranked: " + ", ".join(shown[:6]) + more)
        return lines

    def to_json(self) -> dict[str, Any]:
        return {
            "incomplete_share_threshold": INCOMPLETE_SHARE,
            "incomplete_units": [
                {k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()}
                for row in self.incomplete.to_dict("records")],
            "not_ranked": [{"point_id": p, "strategy": s} for p, s in sorted(self.unranked())],
            "advice": None if self.ok else self.advice(),
        }


def assess(units: pd.DataFrame, manifest: dict[str, Any] | None = None) -> RunHealth:
    """The health of a run from its per-unit metrics (``num_requests``, ``num_unfinished``)."""
    manifest = manifest or {}
    live = manifest.get("live") or {}
    mode = str(manifest.get("mode") or "sim")
    if units.empty or "num_unfinished" not in units.columns:
        return RunHealth(pd.DataFrame(columns=_COLUMNS), mode, live.get("max_duration_s"))
    total = units["num_requests"].astype(float)
    share = units["num_unfinished"].astype(float) / total.where(total > 0)
    bad = units.assign(unfinished_share=share)[share > INCOMPLETE_SHARE]
    return RunHealth(bad[_COLUMNS].reset_index(drop=True), mode, live.get("max_duration_s"))
