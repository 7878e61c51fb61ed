"""A full disk while a training checkpoint is written (issue 13): the run stops with one line
`error: no space left on device while writing ...; the last complete checkpoint is ...` (exit 2), leaves no
temporary `.step-*.tmp-*` folder, and the previous checkpoint loads and resumes.

The disk is "full" through RLIMIT_FSIZE with SIGXFSZ ignored (tests/train_runner.py, PLMKIT_TEST_FILE_LIMIT):
from the start of the second checkpoint on, a write past the limit fails with EFBIG as on a full disk."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import train_helpers as h
from hashing import tree_hashes
from plmkit.io import load
from plmkit.train.checkpoint import list_checkpoints, load_training_state

GPT = h.ROOT / "recipes" / "gpt-clm.yaml"
LIMIT = 8192  # bytes: above the run's small files (metrics, plmkit.json), below model.safetensors


@pytest.mark.slow
def test_a_full_disk_while_checkpointing_is_one_line_and_keeps_the_last_checkpoint(tmp_path):
    corpus = h.write_english(tmp_path / "en.txt", 20_000)
    out_dir = tmp_path / "run"
    overrides = [
        *h.tiny_overrides(GPT, corpus, tmp_path, steps=4),
        "checkpoint.every=2",
        "checkpoint.keep_last=3",
        f"out_dir={out_dir}",
    ]
    env = {
        **os.environ,
        "PYTHONPATH": str(h.SRC),
        "OMP_NUM_THREADS": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PLMKIT_TEST_FILE_LIMIT": f"{LIMIT}:2",  # the second checkpoint (step 4) hits the limit
    }
    proc = subprocess.run(
        [sys.executable, str(h.ROOT / "tests" / "train_runner.py"), "pretrain", str(GPT), *overrides],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    first = out_dir / "checkpoints" / "step-00000002"
    assert errors == [
        f"error: no space left on device while writing {out_dir / 'checkpoints' / 'step-00000004'} "
        f"(File too large, errno 27); the last complete checkpoint is {first}: free some space and "
        "continue with --resume"
    ], proc.stderr
    assert list_checkpoints(out_dir) == [first]
    assert sorted(p.name for p in (out_dir / "checkpoints").iterdir()) == ["step-00000002"]  # no .tmp
    model, tokenizer = load(first)
    assert tokenizer is not None and sum(p.numel() for p in model.parameters()) > 0
    assert load_training_state(first)[1]["step"] == 2


def test_a_full_disk_in_the_training_state_removes_the_temporary_folder(tmp_path, monkeypatch):
    """The same at the last writes of a checkpoint (training_state.pt), in process: ENOSPC from the write."""
    import errno

    import torch

    import plmkit.train.checkpoint as checkpoint
    from plmkit.errors import DiskFullError
    from tiny import tiny_model

    run = tmp_path / "run"
    models = {"model": tiny_model()}
    first = checkpoint.save_checkpoint(run, 1, models, None, {"x": torch.ones(2)}, {}, keep_last=3)
    before = tree_hashes(first)

    def full(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", full)
    with pytest.raises(DiskFullError, match=f"the last complete checkpoint is {first}"):
        checkpoint.save_checkpoint(run, 2, models, None, {"x": torch.ones(2)}, {}, keep_last=3)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-00000001"]
    assert tree_hashes(first) == before
    monkeypatch.undo()
    assert load_training_state(first)[1]["step"] == 1
