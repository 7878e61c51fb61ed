"""Run folders: which start of a recipe may write into `out_dir`, decided before anything is written.

    plan = plan_run_folder(config)    # read-only; RunFolderBusy / CheckpointError / ConfigError
    moved = prepare_run_folder(plan)  # --overwrite: the old folder goes to <run>.old-<time> (rank 0)
    ... build the run, check and restore the checkpoint ...
    record_recipe(plan, config, info) # recipe.json for a new folder; a recipe-history.jsonl line per resume

The rules (one run per folder, nothing lost):
- a new run needs an empty (or absent) run folder; a non-empty one is refused, unless `overwrite` is
  set: then the whole old folder is renamed to a sibling `<run>.old-<YYYYmmdd-HHMMSS>` (never deleted,
  never mixed with the new run);
- `resume: true` continues from the folder's latest checkpoint (an empty folder starts from step 0);
  a folder with files but no complete checkpoint is refused;
- `resume: PATH` of this folder must be its latest checkpoint (resuming an earlier one would leave the
  later ones beside a second history); a PATH of another folder starts a branch in an empty run folder;
- recipe.json stays the recipe the folder was started with; each resume appends one line to
  recipe-history.jsonl: when, from which checkpoint, and the recipe keys that differ from the recipe
  that wrote it.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from plmkit.config import to_dict
from plmkit.errors import CheckpointError, ConfigError
from plmkit.files import check_folder_path, make_folder
from plmkit.train.checkpoint import checkpoint_step, latest_checkpoint, list_checkpoints, read_trainer_info

RECIPE_FILE = "recipe.json"  # the recipe the run folder was started with
HISTORY_FILE = "recipe-history.jsonl"  # one line per resume
UNRECORDED = ("resume", "overwrite")  # how a start was asked for, not what it trains


class RunFolderBusy(ConfigError):
    """A new run into a run folder that already holds one."""

    def __init__(self, run_dir: Path, summary: str, resumable: bool = True) -> None:
        self.run_dir, self.summary = run_dir, summary
        resume = "continue it with --resume, " if resumable else ""
        super().__init__(
            f"run folder {run_dir} already holds a run ({summary}); {resume}start another with name=NAME "
            f"or out_dir=DIR, or add --overwrite to move the old folder aside to {run_dir}.old-<time>"
        )


@dataclass
class RunPlan:
    run_dir: Path
    resume_from: Path | None = None  # the checkpoint to restore
    new: bool = True  # the folder starts here: recipe.json is written, and removed again if the start fails
    move_aside: bool = False  # overwrite: rename the non-empty folder before anything is written


def plan_run_folder(config: Any) -> RunPlan:
    """What this start does with `config.run_dir`, from the files there (writes nothing)."""
    run_dir = Path(config.run_dir)
    check_folder_path(run_dir, "run folder (out_dir)")  # not under a regular file
    held = _entries(run_dir)
    resume, overwrite = config.resume, getattr(config, "overwrite", False)
    if resume is True:
        if overwrite:
            raise ConfigError(
                f"--resume continues the run in {run_dir} and --overwrite moves it aside; give one of them"
            )
        latest = latest_checkpoint(run_dir)
        if latest is None:
            if held:
                raise ConfigError(
                    f"--resume: run folder {run_dir} holds no complete checkpoint to resume from "
                    f"({_describe(run_dir, held)}); add --overwrite (instead of --resume) to start again, "
                    "moving the old folder aside"
                )
            return RunPlan(run_dir)  # nothing to resume yet: the first start
        read_trainer_info(latest)  # complete and readable
        return RunPlan(run_dir, latest, new=False)
    if resume:
        checkpoint = Path(str(resume))
        if not checkpoint.is_dir():
            raise CheckpointError(f"resume checkpoint {checkpoint} does not exist")
        read_trainer_info(checkpoint)
        if _same(checkpoint.parent, run_dir / "checkpoints"):
            if overwrite:
                raise ConfigError(
                    f"--resume {checkpoint} is in the run folder that --overwrite would move aside; give one of them"
                )
            later = [
                c.name for c in list_checkpoints(run_dir) if checkpoint_step(c) > checkpoint_step(checkpoint)
            ]
            if later:
                raise ConfigError(
                    f"--resume {checkpoint}: run folder {run_dir} has later checkpoints ({', '.join(later)}); "
                    "resume from the latest (--resume), or continue this one in a new folder "
                    f"(--resume {checkpoint} out_dir=DIR)"
                )
            return RunPlan(run_dir, checkpoint, new=False)
        if held and not overwrite:  # a branch from another folder's checkpoint: a new run folder
            raise RunFolderBusy(run_dir, _describe(run_dir, held))
        return RunPlan(run_dir, checkpoint, move_aside=bool(held))
    if held and not overwrite:
        raise RunFolderBusy(run_dir, _describe(run_dir, held))
    return RunPlan(run_dir, move_aside=bool(held))


def prepare_run_folder(plan: RunPlan) -> Path | None:
    """Move the old folder aside when the plan says so (rank 0 only); returns where it went."""
    if not plan.move_aside or not plan.run_dir.exists():
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside = plan.run_dir.with_name(f"{plan.run_dir.name}.old-{stamp}")
    n = 1
    while aside.exists():
        n += 1
        aside = plan.run_dir.with_name(f"{plan.run_dir.name}.old-{stamp}-{n}")
    os.replace(plan.run_dir, aside)  # one rename: the old run stays whole
    print(f"overwrite: moved the old run folder {plan.run_dir} to {aside}", file=sys.stderr, flush=True)
    return aside


def discard_new_folder(plan: RunPlan) -> None:
    """A new run that failed before training: remove what it wrote (its folder was empty or absent)."""
    if plan.new and plan.run_dir.is_dir():
        shutil.rmtree(plan.run_dir, ignore_errors=True)


def record_recipe(plan: RunPlan, config: Any, info: dict[str, Any] | None = None) -> None:
    """recipe.json for a new folder; a recipe-history.jsonl line for a resume (`info`: the checkpoint's
    trainer_state.json, whose recipe is compared)."""
    recipe = {k: v for k, v in to_dict(config).items() if k not in UNRECORDED}
    make_folder(plan.run_dir, "run folder (out_dir)")
    if plan.new:
        (plan.run_dir / RECIPE_FILE).write_text(json.dumps(recipe, indent=2) + "\n", encoding="utf-8")
    if plan.resume_from is None:
        return
    before = {k: v for k, v in (info or {}).get("recipe", {}).items() if k not in UNRECORDED}
    row = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "resumed_from": str(plan.resume_from),
        "step": (info or {}).get("step"),
        "changed": changed_keys(before, recipe),
    }
    with open(plan.run_dir / HISTORY_FILE, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")


def changed_keys(before: dict[str, Any], after: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted keys whose value differs between two recipe dicts: {"train.steps": 200, ...}."""
    out: dict[str, Any] = {}
    for key in sorted(set(before) | set(after)):
        old, new = before.get(key), after.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            out.update(changed_keys(old, new, f"{prefix}{key}."))
        elif old != new:
            out[f"{prefix}{key}"] = new
    return out


def _entries(folder: Path) -> list[str]:
    try:
        return sorted(p.name for p in folder.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []


def _describe(run_dir: Path, held: list[str]) -> str:
    latest = latest_checkpoint(run_dir)
    if latest is not None:
        return f"checkpoints up to {latest.name}"
    shown = ", ".join(held[:3]) + (f" and {len(held) - 3} more" if len(held) > 3 else "")
    return f"no checkpoint; {shown}"


def _same(a: Path, b: Path) -> bool:
    return a.resolve() == b.resolve()
