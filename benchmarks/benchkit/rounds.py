"""Interleaved timing (BENCHMARKING.md rule 2 and 3): the one timing loop of every row.

compare({"transformers": f, "plmkit": g, ...}) warms each variant up, sizes a block (enough calls of a
variant for ~block_s of wall time, so /proc/stat's 10 ms ticks do not swamp the shares), then runs
rounds: before each, a bounded wait for a quiet second; in round r the variants run in the order
rotated by r, one block each, each block with its own contention shares. A round is quiet when all
of its blocks are. It keeps adding rounds until `rounds` are quiet, up to max_rounds or budget_s.
ratio(...) is the median of the per-round ratios over the quiet rounds, with min, max and their count;
with no quiet round it uses every round and says so. Every round is kept in the output.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

from benchkit import contention


@dataclass
class Plan:
    warmup: int = 2  # untimed calls of each variant
    rounds: int = 5  # quiet rounds wanted
    max_rounds: int = 10  # rounds at most (quiet or not)
    block_s: float = 0.5  # wall time a block aims for (whole calls, at least one)
    wait_s: float = 5.0  # longest wait for a quiet second before a round
    probe_s: float = 1.0  # the quiet window waited for
    budget_s: float = 120.0  # no new round starts after this much time in this comparison


def compare(variants: dict[str, Callable[[], object]], plan: Plan) -> dict:
    """Rounds of interleaved blocks; returns {"calls_per_block", "rounds": [...]} (see module doc)."""
    names = list(variants)
    per_call: dict[str, float] = {}
    for name in names:
        start = time.perf_counter()
        for _ in range(max(1, plan.warmup)):
            variants[name]()
        per_call[name] = (time.perf_counter() - start) / max(1, plan.warmup)
    calls = {n: max(1, math.ceil(plan.block_s / max(per_call[n], 1e-6))) for n in names}
    n_cores = contention.cores()
    rounds: list[dict] = []
    start = time.perf_counter()
    while len(rounds) < plan.max_rounds and sum(r["quiet"] for r in rounds) < plan.rounds:
        if rounds and time.perf_counter() - start > plan.budget_s:
            break
        wait = contention.wait_for_quiet(plan.wait_s, plan.probe_s) if plan.wait_s > 0 else None
        k = len(rounds) % len(names)
        order = names[k:] + names[:k]
        blocks = {}
        for name in order:
            before = contention.sample()
            for _ in range(calls[name]):
                variants[name]()
            after = contention.sample()
            blocks[name] = {
                "seconds": (after.wall - before.wall) / calls[name],
                **contention.shares(before, after, n_cores),
            }
        rounds.append(
            {
                "order": order,
                "wait": wait,
                "blocks": blocks,
                "quiet": all(b["quiet"] for b in blocks.values()),
            }
        )
    return {"calls_per_block": calls, "rounds": rounds}


def ratio(rounds: list[dict], numerator: str, denominator: str) -> dict:
    """Median over quiet rounds of seconds[numerator] / seconds[denominator], with min, max, counts.
    (numerator = the reference: the result is the speed-up of `denominator`.)"""
    quiet = [r for r in rounds if r["quiet"]]
    used = quiet or rounds
    values = [r["blocks"][numerator]["seconds"] / r["blocks"][denominator]["seconds"] for r in used]
    if not values:
        return {"median": None, "min": None, "max": None, "quiet_rounds": 0, "rounds": 0}
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "quiet_rounds": len(quiet),
        "rounds": len(rounds),
        "over": "quiet rounds" if quiet else "all rounds (none was quiet)",
    }


def seconds(rounds: list[dict], name: str) -> float | None:
    """Median seconds per call of one variant over the quiet rounds (all rounds if none was quiet)."""
    used = [r for r in rounds if r["quiet"]] or rounds
    values = [r["blocks"][name]["seconds"] for r in used]
    return statistics.median(values) if values else None
