"""Run logging: the live progress line (step, loss, lr, tokens/s, ETA), metrics.jsonl rows, the run
folder's files, and TensorBoard / the loss-curve PNG only when their packages are installed."""

from __future__ import annotations

import importlib.util
import io
import json
import re
from pathlib import Path

import train_helpers as h
from plmkit.config import load_config
from plmkit.recipes.config import RecipeConfig
from plmkit.recipes.pretrain import pretrain
from plmkit.train.logging import RunLogger, plot_loss_curve

GPT = h.ROOT / "recipes" / "gpt-clm.yaml"


def test_progress_lines_metrics_and_run_folder(tmp_path):
    corpus = h.write_english(tmp_path / "en.txt", 20_000)
    overrides = h.tiny_overrides(GPT, corpus, tmp_path, steps=4) + [
        "log.every=2",
        "eval.every=2",
        "log.tensorboard=true",
        "log.plot=true",
    ]
    config = load_config(RecipeConfig, GPT, overrides)
    stream = io.StringIO()
    result = pretrain(config, stream=stream)
    run_dir = Path(config.run_dir)
    text = stream.getvalue()
    assert f"run gpt-clm -> {run_dir}" in text
    progress = re.compile(
        r"step +(\d+)/4  loss \d+\.\d{4}  (val_loss \d+\.\d{4} ppl [\d,.]+  )?lr [\d.]+e[-+]\d+  "
        r"[\d,]+ tok/s(  eta \d+m\d\ds)?"
    )
    assert [int(m.group(1)) for m in progress.finditer(text)] == [2, 4]
    rows = h.read_metrics(run_dir)
    assert [(r["step"], sorted(r)) for r in rows] == [
        (0, ["step", "val_loss", "val_ppl"]),
        (2, ["loss", "lr", "skipped_steps", "step", "tokens", "tokens_per_s", "val_loss", "val_ppl"]),
        (4, ["loss", "lr", "skipped_steps", "step", "tokens", "tokens_per_s"]),
        (4, ["step", "val_loss", "val_ppl"]),
    ]
    assert rows[1]["tokens"] == 2 * 8 * 32 and rows[2]["tokens"] == result["tokens"] == 4 * 8 * 32
    recipe = json.loads((run_dir / "recipe.json").read_text(encoding="utf-8"))
    assert recipe["train"]["steps"] == 4 and recipe["name"] == "gpt-clm"
    has_tb = importlib.util.find_spec("tensorboard") is not None
    assert (run_dir / "tensorboard").is_dir() == has_tb
    has_mpl = importlib.util.find_spec("matplotlib") is not None
    assert (run_dir / "loss_curve.png").is_file() == has_mpl == ("loss_curve" in result)


def test_plot_loss_curve_without_matplotlib_returns_none(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails as if not installed
    RunLogger(tmp_path, 10, tensorboard=False, stream=io.StringIO()).log(1, {"loss": 1.0})
    assert plot_loss_curve(tmp_path) is None
    assert not (tmp_path / "loss_curve.png").exists()


def test_non_finite_values_are_written_as_strings(tmp_path):
    logger = RunLogger(tmp_path, 10, tensorboard=False, stream=io.StringIO())
    logger.log(3, {"loss": float("nan"), "lr": 1e-3})
    row = json.loads((tmp_path / "metrics.jsonl").read_text(encoding="utf-8"))
    assert row == {"step": 3, "loss": "nan", "lr": 1e-3}  # valid JSON, no bare NaN


def test_no_eta_before_a_few_steps_are_timed(tmp_path):
    """Step 1's time (lazy initialisation, the first evaluation) would make a wild ETA."""
    from plmkit.train.logging import ETA_AFTER_STEPS

    logger = RunLogger(tmp_path, 1000, tensorboard=False, stream=io.StringIO())
    logger.begin(200)  # a resumed run: its steps are counted from here
    assert "eta" not in logger.progress_line(201, {"loss": 1.0})
    assert "eta" not in logger.progress_line(200 + ETA_AFTER_STEPS - 1, {"loss": 1.0})
    assert re.search(r"  eta \d+m\d\ds$", logger.progress_line(200 + ETA_AFTER_STEPS, {"loss": 1.0}))


def test_deepspeed_per_step_warnings_are_shown_once():
    import logging

    from plmkit.train.distributed.deepspeed import OncePerRun

    records = []
    handler = logging.Handler()
    handler.emit = records.append
    ds = logging.getLogger("plmkit-test-deepspeed")
    ds.addHandler(handler)
    ds.addFilter(OncePerRun())
    for _ in range(3):
        ds.warning("%d pytorch allocator cache flushes since last step. this happens ...", 2)
        ds.warning("another warning")
    assert [r.getMessage()[:30] for r in records] == [
        "2 pytorch allocator cache flus",
        "another warning",
        "another warning",
        "another warning",
    ]
