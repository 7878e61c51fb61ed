"""The server's counters in the Prometheus text format (GET /metrics): requests by route and status, prompt
and generated tokens, decoding steps and the mean batch, the queue and the running sequences, and
histograms of request latency and time to first token.

Written by hand (the format is a few lines of text) rather than with prometheus_client, which would be one
more dependency of the `serve` extra.
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from plmkit.serve.batcher import Batcher

BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)  # seconds
PREFIX = "plmkit"


class Histogram:
    def __init__(self) -> None:
        self.counts = [0] * len(BUCKETS)
        self.total = 0
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.total += 1
        self.sum += seconds
        for i, bound in enumerate(BUCKETS):
            if seconds <= bound:
                self.counts[i] += 1

    def lines(self, name: str) -> list[str]:
        out = [f'{name}_bucket{{le="{bound}"}} {count}' for bound, count in zip(BUCKETS, self.counts)]
        out += [
            f'{name}_bucket{{le="+Inf"}} {self.total}',
            f"{name}_sum {self.sum:.6f}",
            f"{name}_count {self.total}",
        ]
        return out


class Metrics:
    """Thread-safe counters; `render(batcher)` adds the batcher's own at the time of the scrape."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: Counter[tuple[str, int]] = Counter()  # (route, status) -> count
        self.latency = Histogram()  # whole request, generation routes
        self.ttft = Histogram()  # time to the first new token, generation routes

    def count(self, route: str, status: int) -> None:
        with self._lock:
            self.requests[(route, status)] += 1

    def observe(self, seconds: float, ttft: float | None) -> None:
        """One generation request's latency and time to its first new token (None: it made none)."""
        with self._lock:
            self.latency.observe(seconds)
            if ttft is not None:
                self.ttft.observe(ttft)

    def render(self, batcher: Batcher) -> str:
        p = PREFIX
        with self._lock:
            lines = [
                f"# HELP {p}_requests_total Requests answered, by route and HTTP status.",
                f"# TYPE {p}_requests_total counter",
            ]
            for (route, status), count in sorted(self.requests.items()):
                lines.append(f'{p}_requests_total{{route="{route}",status="{status}"}} {count}')
            for name, help_, value in (
                ("prompt_tokens_total", "Prompt tokens prefilled.", batcher.prompt_tokens),
                ("generation_tokens_total", "Tokens generated.", batcher.generated_tokens),
                ("decode_steps_total", "Batched decoding steps.", batcher.steps),
                (
                    "decode_rows_total",
                    "Sequences summed over decoding steps (mean batch = rows / steps).",
                    batcher.batch_rows,
                ),
            ):
                lines += [f"# HELP {p}_{name} {help_}", f"# TYPE {p}_{name} counter", f"{p}_{name} {value}"]
            for name, help_, value in (
                ("queue_length", "Prompts waiting for a decoding slot.", batcher.queue_length),
                ("running_sequences", "Sequences in the running batch.", batcher.running_count),
                ("max_batch", "The largest running batch (plm serve --max-batch).", batcher.max_batch),
            ):
                lines += [f"# HELP {p}_{name} {help_}", f"# TYPE {p}_{name} gauge", f"{p}_{name} {value}"]
            for name, help_, histogram in (
                ("request_latency_seconds", "Time from a generation request to its last byte.", self.latency),
                (
                    "time_to_first_token_seconds",
                    "Time from a generation request to its first new token.",
                    self.ttft,
                ),
            ):
                lines += [
                    f"# HELP {p}_{name} {help_}",
                    f"# TYPE {p}_{name} histogram",
                    *histogram.lines(f"{p}_{name}"),
                ]
        return "\n".join(lines) + "\n"
