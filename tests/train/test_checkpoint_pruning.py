"""Pruning (issue 13): keep_last counts back from the checkpoint just written; it never deletes that
one, nor a checkpoint of a later step (by step number alone, a step-600 left by another run would
outrank, and delete, a new run's final step-30)."""

from __future__ import annotations

from pathlib import Path

from plmkit.train.checkpoint import TRAINER_FILE, latest_checkpoint, list_checkpoints, prune_checkpoints


def fake_checkpoints(run_dir: Path, *steps: int) -> list[Path]:
    out = []
    for step in steps:
        folder = run_dir / "checkpoints" / f"step-{step:08d}"
        folder.mkdir(parents=True)
        (folder / TRAINER_FILE).write_text(f'{{"step": {step}}}')
        out.append(folder)
    return out


def names(run_dir: Path) -> list[str]:
    return [p.name for p in list_checkpoints(run_dir)]


def test_pruning_keeps_the_checkpoint_just_written_and_later_ones(tmp_path):
    fake_checkpoints(tmp_path, 10, 20, 30, 600)
    current = tmp_path / "checkpoints" / "step-00000030"
    deleted = prune_checkpoints(tmp_path, current, keep_last=1)
    assert [p.name for p in deleted] == ["step-00000010", "step-00000020"]
    assert names(tmp_path) == ["step-00000030", "step-00000600"]


def test_pruning_keeps_the_newest_keep_last(tmp_path):
    fake_checkpoints(tmp_path, 1, 2, 3, 4)
    prune_checkpoints(tmp_path, tmp_path / "checkpoints" / "step-00000004", keep_last=2)
    assert names(tmp_path) == ["step-00000003", "step-00000004"]
    assert latest_checkpoint(tmp_path).name == "step-00000004"
    assert prune_checkpoints(tmp_path, tmp_path / "checkpoints" / "step-00000004", keep_last=0) == []
    assert names(tmp_path) == ["step-00000003", "step-00000004"]  # keep_last=0: keep every checkpoint
