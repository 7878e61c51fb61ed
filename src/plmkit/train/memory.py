"""Exact CPU memory accounting of a block of code: what `torch.cuda.max_memory_allocated` gives on a GPU.

    with track_cpu_allocations() as memory:
        loss = model(**batch).loss
        memory.mark("forward")              # bytes held now: the activations saved for backward
        loss.backward()
    memory.peak_bytes, memory.at("forward"), memory.net_bytes

It replays torch.profiler's allocation records (profile_memory=True): every tensor allocation and free
on the CPU, in order, so the numbers are deterministic (no RSS noise, no allocator caching) and count
only memory allocated inside the block. Profiling slows the block down: measure, do not time.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile, record_function

_MARK_PREFIX = "plmkit_memory_mark:"


@dataclass
class CpuAllocations:
    """Filled in when the `track_cpu_allocations` block ends."""

    peak_bytes: int = 0  # the most bytes held at once (allocated minus freed since the block began)
    net_bytes: int = 0  # bytes still held at the end of the block
    marks: dict[str, int] = field(default_factory=dict)  # bytes held at each mark

    def mark(self, name: str) -> None:
        """Remember how many bytes are held at this point, under `name`."""
        with record_function(_MARK_PREFIX + name):
            pass

    def at(self, name: str) -> int:
        return self.marks[name]


@contextlib.contextmanager
def track_cpu_allocations() -> Iterator[CpuAllocations]:
    stats = CpuAllocations()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        yield stats
    # The raw records: one "[memory]" event per allocation (+bytes) or free (-bytes), with timestamps.
    events = prof.profiler.kineto_results.events()
    marks = sorted(
        (e.start_ns(), e.name()[len(_MARK_PREFIX) :]) for e in events if e.name().startswith(_MARK_PREFIX)
    )
    records = sorted(
        (e.start_ns(), e.nbytes())
        for e in events
        if e.name() == "[memory]" and e.device_type() == DeviceType.CPU
    )
    held = 0
    pending = iter(marks)
    next_mark = next(pending, None)
    for time_ns, nbytes in records:
        while next_mark is not None and next_mark[0] < time_ns:
            stats.marks[next_mark[1]] = held
            next_mark = next(pending, None)
        held += nbytes
        stats.peak_bytes = max(stats.peak_bytes, held)
    while next_mark is not None:
        stats.marks[next_mark[1]] = held
        next_mark = next(pending, None)
    stats.net_bytes = held
