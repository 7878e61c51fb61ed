"""Shared helpers of the distributed-training tests (tests/test_dist_*.py): one tiny corpus and tokenizer,
recipe overrides for a 2-rank run and its 1-process reference with the same global batch, launchers for
`plm pretrain --nproc 2` and plain torchrun, and per-step loss comparisons."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

import train_helpers as h

GPT = h.ROOT / "recipes" / "gpt-clm.yaml"
BERT = h.ROOT / "recipes" / "bert-mlm.yaml"
TESTS = Path(__file__).resolve().parent
STEPS, EVERY = 4, 2  # 4 optimizer steps, a checkpoint after step 2
TOLERANCE = 1e-5  # fp32: the ranks' gradient averaging reorders sums, nothing else differs


def prepare(root: Path) -> Path:
    """A corpus and a BPE tokenizer in `root`, and the token-store cache warmed (returns the corpus)."""
    from plmkit.tokenizer import Tokenizer

    corpus = h.write_english(root / "en.txt", 20_000)
    Tokenizer.train([corpus.read_text(encoding="utf-8")], kind="bpe", vocab_size=400).save(root / "tok")
    return corpus


def overrides(root: Path, out: str, recipe: Path = GPT, *, batch: int, accumulation: int = 1) -> list[str]:
    """A tiny run of `recipe` into root/out; `batch` rows per process and micro-batch."""
    tokenizer = [f"tokenizer.path={root / 'tok'}"] if recipe == GPT else []
    return (
        h.tiny_overrides(recipe, root / "en.txt", root, steps=STEPS)
        + tokenizer
        + [
            f"out_dir={root / out}",
            f"train.batch_size={batch}",
            f"train.accumulation={accumulation}",
            f"checkpoint.every={EVERY}",
            "checkpoint.keep_last=3",
            "optim.lr=1e-2",
            "eval.batches=1000",
        ]
    )


def run_single(
    root: Path, out: str, *extra: str, recipe: Path = GPT, batch: int = 8, accumulation: int = 1
) -> dict:
    """The 1-process reference, in this process."""
    from plmkit.config import load_config
    from plmkit.recipes.config import RecipeConfig
    from plmkit.recipes.pretrain import pretrain

    config = load_config(
        RecipeConfig,
        recipe,
        overrides(root, out, recipe, batch=batch, accumulation=accumulation) + list(extra),
    )
    return pretrain(config, stream=io.StringIO())


def environment(**extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(h.SRC), str(TESTS)]),
        "OMP_NUM_THREADS": "1",
        **extra,
    }


def launch(
    root: Path, args: list[str], *, runner: str = "plm", timeout: float = 300, env: dict | None = None
) -> subprocess.CompletedProcess:
    """2 processes: `plm pretrain ARGS --nproc 2` (runner "plm"), `torchrun -m plmkit pretrain ARGS`
    ("torchrun"), or torchrun running tests/dist_runner.py with a fault ("faulty")."""
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    command = {
        "plm": [sys.executable, "-m", "plmkit", "pretrain", *args, "--nproc", "2"],
        "torchrun": [*torchrun, "-m", "plmkit", "pretrain", *args],
        "faulty": [*torchrun, str(TESTS / "dist_runner.py"), "pretrain", *args],
    }[runner]
    try:
        return subprocess.run(
            command, cwd=root, env=environment(**(env or {})), capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{runner} did not finish in {timeout} s:\n{(e.stderr or b'')[-3000:]!r}")


def succeeded(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc


def losses(run_dir: Path) -> dict[int, float]:
    return h.losses_by_step(run_dir)


def assert_same_losses(got: dict[int, float], want: dict[int, float], steps: list[int]) -> None:
    assert sorted(got) == steps, got
    for step in steps:
        assert isinstance(got[step], float) and isinstance(want[step], float), (step, got[step], want[step])
        assert abs(got[step] - want[step]) <= TOLERANCE, f"step {step}: {got[step]!r} vs {want[step]!r}"


def final_val_loss(run_dir: Path) -> float:
    return [r["val_loss"] for r in h.read_metrics(run_dir) if "val_loss" in r][-1]


def checkpoint(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"step-{step:08d}"
