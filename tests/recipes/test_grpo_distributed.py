"""`plm grpo --nproc 2` on CPU (gloo, one thread per process) trains what one process trains with the same
global batch (train.batch_size doubled): every rank samples the same generation batch (same weights, same
seed) and trains on its half of each micro-batch; the per-step losses agree within 1e-5, and the logged
KL and entropy are over both ranks' rows."""

from __future__ import annotations

import subprocess
import sys

import pytest
from test_grpo import REWARDS, save_grpo_base

import dist_helpers as dh
from train_helpers import COMMON, read_metrics

pytestmark = pytest.mark.dist


def test_two_processes_equal_one(tmp_path):
    from plmkit.prompting.arithmetic import sft_rows

    base = save_grpo_base(tmp_path / "base")
    train = tmp_path / "train.jsonl"
    train.write_text("".join(f'{{"prompt": "{r["prompt"]}"}}\n' for r in sft_rows(16)), encoding="utf-8")
    (tmp_path / "my_rewards.py").write_text(REWARDS, encoding="utf-8")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"name: grpo\nrewards: [{{function: '{tmp_path / 'my_rewards.py'}:digits'}}]\n")
    common = [
        f"init_from={base}", f"data.train={train}", "num_generations=4", "generation.max_new_tokens=6",
        "data.max_prompt_length=16", "optim.lr=1e-2", "train.steps=3", "checkpoint.every=0", "log.every=1",
        "grpo.beta=0.05", "grpo.num_iterations=2", f"out_dir={tmp_path / '{name}'}", *COMMON,
    ]  # fmt: skip
    command = [
        sys.executable,
        "-m",
        "plmkit",
        "grpo",
        recipe,
        *common,
        "name=ddp",
        "train.batch_size=4",
        "--nproc",
        "2",
    ]
    proc = subprocess.run(
        [str(c) for c in command],
        cwd=tmp_path,
        env=dh.environment(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    dh.succeeded(proc)
    single = [sys.executable, "-m", "plmkit", "grpo", recipe, *common, "name=one", "train.batch_size=8"]
    dh.succeeded(
        subprocess.run(
            [str(c) for c in single],
            cwd=tmp_path,
            env=dh.environment(),
            capture_output=True,
            text=True,
            timeout=300,
        )
    )
    two, one = (read_metrics(tmp_path / name) for name in ("ddp", "one"))
    assert [r["step"] for r in two] == [r["step"] for r in one] == [1, 2, 3]
    for a, b in zip(two, one, strict=True):
        assert a.get("reward") == b.get("reward")  # the same samples
        for key in ("loss", "kl", "entropy", "clip_ratio/region"):
            assert abs(a[key] - b[key]) <= dh.TOLERANCE, (a["step"], key, a[key], b[key])
