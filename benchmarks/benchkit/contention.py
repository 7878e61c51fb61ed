"""How much of the machine other processes took during a block: /proc/stat before and after.

others_share = (machine busy time - this process's CPU time) / (wall x cores)
steal_share  = steal time / (wall x cores)
A block is quiet when both are <= QUIET (BENCHMARKING.md rule 3). Without /proc/stat (not Linux) the
shares are None and every block counts as quiet; the report says so.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass

QUIET = 0.10
HZ = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True)
class Sample:
    busy_ticks: int | None  # user + nice + system + irq + softirq of all CPUs (None: no /proc/stat)
    steal_ticks: int | None
    own_seconds: float  # CPU time of this process and its waited-for children
    wall: float  # time.perf_counter()


def parse_proc_stat(text: str) -> tuple[int, int]:
    """(busy ticks, steal ticks) from the aggregate "cpu " line of /proc/stat."""
    for line in text.splitlines():
        if line.startswith("cpu "):
            values = [int(v) for v in line.split()[1:]]
            values += [0] * (8 - len(values))
            user, nice, system, _idle, _iowait, irq, softirq, steal = values[:8]
            # guest time is already inside user / nice
            return user + nice + system + irq + softirq, steal
    raise ValueError("no aggregate 'cpu ' line in /proc/stat")


_WORKERS: list[Callable[[], float]] = []  # CPU seconds of processes this one drives (see count_worker)


def count_worker(cpu_seconds: Callable[[], float]) -> None:
    """Count a running worker process's CPU seconds as this process's own: a reference run in another
    virtualenv as a subprocess is part of the work measured, not contention. `cpu_seconds()` returns the
    worker's CPU seconds so far (as it last reported them: it must be idle between the samples)."""
    _WORKERS.append(cpu_seconds)


def own_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system + sum(w() for w in _WORKERS)


def sample() -> Sample:
    try:
        with open("/proc/stat", encoding="ascii") as f:
            busy, steal = parse_proc_stat(f.read())
    except (OSError, ValueError):
        busy = steal = None
    return Sample(busy, steal, own_cpu_seconds(), time.perf_counter())


def shares(before: Sample, after: Sample, cores: int, hz: int = HZ) -> dict:
    """others_share, steal_share and quiet for the block between two samples."""
    wall = after.wall - before.wall
    if before.busy_ticks is None or after.busy_ticks is None or wall <= 0:
        return {"others_share": None, "steal_share": None, "quiet": True}
    capacity = wall * cores
    busy = (after.busy_ticks - before.busy_ticks) / hz
    own = after.own_seconds - before.own_seconds
    # clamped to [0, 1]: over a block of a few ticks, 10 ms rounding alone can exceed the capacity
    others = min(1.0, max(0.0, busy - own) / capacity)
    steal = min(1.0, max(0, after.steal_ticks - before.steal_ticks) / hz / capacity)
    return {
        "others_share": round(others, 3),
        "steal_share": round(steal, 3),
        "quiet": others <= QUIET and steal <= QUIET,
    }


def cores() -> int:
    """CPUs this process may run on (the capacity the shares are fractions of)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def wait_for_quiet(max_wait_s: float, probe_s: float = 1.0) -> dict:
    """Sleep through probe_s windows until one is quiet, for at most max_wait_s. Returns the last
    window's shares plus waited_s (the caller records it: a round that found no quiet second says so)."""
    start = time.perf_counter()
    n = cores()
    while True:
        before = sample()
        time.sleep(probe_s)
        found = shares(before, sample(), n)
        waited = time.perf_counter() - start
        if found["quiet"] or waited >= max_wait_s:
            return {**found, "waited_s": round(waited, 1)}
