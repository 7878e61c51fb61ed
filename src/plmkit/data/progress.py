"""A dependency-free progress line on stderr for long jobs (tokenizing a corpus)."""

from __future__ import annotations

import sys
import time


class Progress:
    """A one-line progress bar on stderr: redrawn in place on a terminal, a line every 10 s otherwise."""

    def __init__(self, total_bytes: int, enabled: bool | None):
        interactive = sys.stderr.isatty()
        self.enabled = enabled if enabled is not None else interactive and total_bytes > 16 << 20
        self.interval = 0.2 if interactive else 10.0
        self.end = "\r" if interactive else "\n"
        self.total, self.bytes, self.documents, self.tokens = total_bytes, 0, 0, 0
        self.start = self.last = time.perf_counter()

    def advance(self, n_bytes: int) -> None:
        self.bytes += n_bytes

    def update(self, documents: int, tokens: int) -> None:
        self.documents += documents
        self.tokens += tokens
        now = time.perf_counter()
        if self.enabled and now - self.last >= self.interval:
            self.last = now
            self._draw(self.end)

    def _draw(self, end: str) -> None:
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        percent = 100.0 * min(self.bytes / self.total, 1.0) if self.total else 100.0
        print(
            f"tokenizing: {percent:5.1f}% of {self.total / 2**20:.1f} MB, {self.documents:,} documents, "
            f"{self.tokens:,} tokens, {self.tokens / elapsed:,.0f} tokens/s",
            end=end,
            file=sys.stderr,
            flush=True,
        )

    def close(self) -> None:
        if self.enabled:
            self.bytes = self.total
            self._draw("\n")
