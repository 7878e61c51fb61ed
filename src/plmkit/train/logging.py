"""Run logging: a live progress line, metrics.jsonl in the run folder, TensorBoard when installed, a
loss-curve PNG (matplotlib, when installed) at the end, and `warn` for what a user should know."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

ETA_AFTER_STEPS = 5  # the first steps (lazy initialisation, the first evaluation) say little about the rest
_warned: set[str] = set()


def warn(message: str) -> None:
    """`warning: MESSAGE` on stderr, once per process (a message repeated later is not printed again)."""
    if message not in _warned:
        _warned.add(message)
        print(f"warning: {message}", file=sys.stderr, flush=True)


class RunLogger:
    """`enabled=False`: a silent logger (the ranks other than 0 of a distributed run)."""

    def __init__(
        self, run_dir: Path, total_steps: int, tensorboard: bool = True, stream=None, enabled: bool = True
    ) -> None:
        self.enabled = enabled
        self.run_dir = run_dir
        self.total_steps = total_steps
        self.stream = stream or sys.stdout
        self.metrics_path = run_dir / "metrics.jsonl"
        self.start = time.time()
        self.start_step = 0
        self.writer = None
        if tensorboard and enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(run_dir / "tensorboard"))
            except Exception:  # tensorboard not installed: the JSONL file has everything
                self.writer = None

    def begin(self, step: int) -> None:
        self.start, self.start_step = time.time(), step

    def print(self, text: str) -> None:
        if self.enabled:
            print(text, file=self.stream, flush=True)

    def log(self, step: int, metrics: dict[str, Any], show: bool = True) -> None:
        if not self.enabled:
            return
        row = {"step": step, **{k: _plain(v) for k, v in metrics.items()}}
        with open(self.metrics_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        if self.writer is not None:
            for key, value in row.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.writer.add_scalar(key, value, step)
        if show:
            self.print(self.progress_line(step, metrics))

    def progress_line(self, step: int, metrics: dict[str, Any]) -> str:
        done = step - self.start_step
        parts = [f"step {step:>6}/{self.total_steps}"]
        if "loss" in metrics:
            parts.append(f"loss {metrics['loss']:.4f}")
        if "val_loss" in metrics:
            parts.append(f"val_loss {metrics['val_loss']:.4f} ppl {metrics['val_ppl']:,.2f}")
        if "lr" in metrics:
            parts.append(f"lr {metrics['lr']:.2e}")
        if (
            "moe_load_cv" in metrics
        ):  # a mixture of experts' load balance (plmkit.model.moe_losses.RouterTally)
            parts.append(f"expert cv {metrics['moe_load_cv']:.2f}")
        if "tokens_per_s" in metrics:
            parts.append(f"{metrics['tokens_per_s']:,.0f} tok/s")
        if done >= ETA_AFTER_STEPS:  # before that an ETA would be a guess from a step or two
            eta = (time.time() - self.start) / done * (self.total_steps - step)
            parts.append(f"eta {_duration(eta)}")
        return "  ".join(parts)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return (
        f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
        if seconds >= 3600
        else f"{seconds // 60}m{seconds % 60:02d}s"
    )


def truncate_metrics(path: Path, step: int) -> None:
    """A resumed run rewrites the steps after its checkpoint: drop their old rows."""
    rows = [r for r in read_metrics(path) if r["step"] <= step] if step else []
    if path.exists() or rows:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The rows of metrics.jsonl; a line cut short by a killed run is left out."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and "step" in row:
            rows.append(row)
    return rows


def plot_loss_curve(run_dir: Path) -> Path | None:
    """loss_curve.png from metrics.jsonl: training loss per step and validation loss; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = read_metrics(run_dir / "metrics.jsonl")
    train = [(r["step"], r["loss"]) for r in rows if isinstance(r.get("loss"), (int, float))]
    val = [(r["step"], r["val_loss"]) for r in rows if isinstance(r.get("val_loss"), (int, float))]
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train), label="train loss", linewidth=1)
    if val:
        ax.plot(*zip(*val), "o-", label="validation loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (nats / token)")
    ax.set_title(run_dir.name)
    ax.grid(alpha=0.3)
    ax.legend()
    path = run_dir / "loss_curve.png"
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
