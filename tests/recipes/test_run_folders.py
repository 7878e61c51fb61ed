"""Run folders (issue 13): a new run never writes into a folder that holds another run, --overwrite moves
the old folder aside whole, a refused or failed --resume changes nothing (every file hashed before and
after), recipe.json stays the first recipe with one recipe-history.jsonl line per resume, and pruning
never deletes the checkpoint a run has just written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import train_helpers as h
from hashing import folder_hashes
from plmkit.train.checkpoint import list_checkpoints

GPT = h.ROOT / "recipes" / "gpt-clm.yaml"
LORA = h.ROOT / "recipes" / "lora-clm.yaml"  # init_from, and no model or tokenizer section


@pytest.fixture
def plm(tmp_path, capsys):
    """`plm pretrain GPT <tiny overrides> EXTRA...` in this process -> (code, stdout, stderr)."""
    corpus = h.write_english(tmp_path / "en.txt", 20_000)
    base = [*h.tiny_overrides(GPT, corpus, tmp_path, steps=2), "checkpoint.every=1", "checkpoint.keep_last=5"]

    def run(*extra: str) -> tuple[int, str, str]:
        return h.run_cli(["pretrain", GPT, *base, *extra], capsys)

    return run


def run_dir(tmp_path: Path) -> Path:
    return tmp_path / "runs" / "gpt-clm"


def test_a_new_run_into_a_folder_holding_one_is_refused_and_changes_nothing(plm, tmp_path):
    assert plm()[0] == 0
    before = folder_hashes(run_dir(tmp_path))
    code, _, err = plm("train.steps=3")
    assert code == 2 and err.count("\n") == 1, err
    assert f"run folder {run_dir(tmp_path)} already holds a run (checkpoints up to step-00000002)" in err
    assert "--resume" in err and "name=NAME" in err and "out_dir=DIR" in err and "--overwrite" in err
    assert folder_hashes(run_dir(tmp_path)) == before


def test_overwrite_moves_the_old_run_folder_aside_whole(plm, tmp_path):
    assert plm()[0] == 0
    before = folder_hashes(run_dir(tmp_path))
    code, out, err = plm("--overwrite", "train.steps=3")  # an override after the option, too
    assert code == 0, err
    (aside,) = [p for p in run_dir(tmp_path).parent.iterdir() if p.name.startswith("gpt-clm.old-")]
    assert f"moved the old run folder {run_dir(tmp_path)} to {aside}" in err
    assert folder_hashes(aside) == before  # the old run, untouched
    assert [p.name for p in list_checkpoints(run_dir(tmp_path))] == [f"step-0000000{i}" for i in (1, 2, 3)]
    assert json.loads((run_dir(tmp_path) / "recipe.json").read_text())["train"]["steps"] == 3


def test_a_failed_resume_writes_nothing(plm, tmp_path):
    """The architecture check fails after the model is built: recipe.json, metrics.jsonl, the tokenizer
    and the checkpoints are exactly as they were."""
    assert plm()[0] == 0
    before = folder_hashes(run_dir(tmp_path))
    code, _, err = plm("--resume", "model.n_layer=2", "train.steps=4")
    assert code == 2 and "cannot resume from" in err and "n_layer=1 vs 2" in err, err
    assert folder_hashes(run_dir(tmp_path)) == before


def test_resume_keeps_recipe_json_and_appends_the_changed_keys(plm, tmp_path):
    assert plm()[0] == 0
    recipe = (run_dir(tmp_path) / "recipe.json").read_bytes()
    code, out, err = plm("--resume", "train.steps=3")  # the override is not the checkpoint
    assert code == 0, err
    assert json.loads(out.splitlines()[-1])["step"] == 3
    code, out, err = plm("--resume", "train.steps=4", "optim.lr=1e-4")
    assert code == 0, err
    assert (run_dir(tmp_path) / "recipe.json").read_bytes() == recipe
    history = [
        json.loads(line) for line in (run_dir(tmp_path) / "recipe-history.jsonl").read_text().splitlines()
    ]
    assert [(r["step"], r["changed"]) for r in history] == [
        (2, {"train.steps": 3}),
        (3, {"train.steps": 4, "optim.lr": 1e-4}),
    ]
    assert history[1]["resumed_from"] == str(run_dir(tmp_path) / "checkpoints" / "step-00000003")


def test_resuming_an_earlier_checkpoint_of_the_folder_is_refused(plm, tmp_path):
    assert plm()[0] == 0
    before = folder_hashes(run_dir(tmp_path))
    first = run_dir(tmp_path) / "checkpoints" / "step-00000001"
    code, _, err = plm("--resume", str(first), "train.steps=4")
    assert code == 2 and "has later checkpoints (step-00000002)" in err and "out_dir=DIR" in err, err
    assert folder_hashes(run_dir(tmp_path)) == before
    code, _, err = plm("--resume", str(first), "train.steps=4", f"out_dir={tmp_path / 'branch'}")
    assert code == 0, err  # the branch goes into its own folder
    assert (tmp_path / "branch" / "checkpoints" / "step-00000004").is_dir()


def test_resume_without_a_checkpoint_in_a_used_folder_is_refused(plm, tmp_path):
    folder = run_dir(tmp_path)
    folder.mkdir(parents=True)
    (folder / "notes.txt").write_text("mine")
    code, _, err = plm("--resume")
    assert code == 2 and "holds no complete checkpoint" in err and "--overwrite" in err, err
    assert folder_hashes(folder) == {"notes.txt": folder_hashes(folder)["notes.txt"]}


def test_overwrite_with_resume_is_refused(plm, tmp_path):
    assert plm()[0] == 0
    before = folder_hashes(run_dir(tmp_path))
    code, _, err = plm("--resume", "--overwrite")
    assert code == 2 and "give one of them" in err, err
    assert folder_hashes(run_dir(tmp_path)) == before


def test_a_new_run_that_fails_to_start_leaves_no_folder(plm, tmp_path):
    code, _, err = plm("model.vocab_size=123")  # found once the tokenizer is trained
    assert code == 2 and "model.vocab_size=123" in err, err
    assert not run_dir(tmp_path).exists()
    assert plm()[0] == 0  # so the corrected command just works


def test_a_run_shorter_than_its_warmup_warns_once(plm, monkeypatch):
    import plmkit.train.logging as logging

    monkeypatch.setattr(logging, "_warned", set())
    code, _, err = plm("schedule.warmup_steps=10")
    assert code == 0, err
    line = "warning: train.steps=2 is shorter than schedule.warmup_steps=10"
    assert err.count(line) == 1, err


def test_init_from_ignores_the_model_and_tokenizer_sections_said_once(tmp_path, monkeypatch, capsys):
    import plmkit.train.logging as logging
    from plmkit.config import load_config
    from plmkit.recipes.config import RecipeConfig
    from plmkit.recipes.inputs import ignored_model_keys
    from plmkit.recipes.pretrain import warn_about

    monkeypatch.setattr(logging, "_warned", set())
    config = load_config(
        RecipeConfig,
        LORA,
        ["init_from=base", "model.n_layer=2", "tokenizer.vocab_size=99", "schedule.warmup_steps=0"],
    )
    warn_about(config)
    warn_about(config)
    err = capsys.readouterr().err
    assert err.count("warning: init_from=base: ") == 1, err
    assert "the recipe's tokenizer.vocab_size are ignored" in err
    assert ignored_model_keys(config) == ["n_layer"]  # load_init_from's warning names it
    plain = load_config(RecipeConfig, LORA, ["init_from=base", "schedule.warmup_steps=0"])
    warn_about(plain)  # nothing set that it ignores: nothing said
    assert capsys.readouterr().err == ""
    rates = load_config(RecipeConfig, LORA, ["init_from=base", "model.dropout=0.1", "model.preset=gpt2-tiny"])
    assert ignored_model_keys(rates) == ["preset"]  # the dropout rates apply to the checkpoint


@pytest.mark.slow  # a real subprocess: ~5 s
def test_ctrl_c_prints_the_command_that_resumes_the_run(tmp_path):
    """A real `python -m plmkit pretrain` given SIGINT once its first checkpoint exists: exit 130 and one
    line with the command to run (the same command plus --resume)."""
    import os
    import shlex
    import signal
    import subprocess
    import sys
    import time

    from plmkit.train.checkpoint import latest_checkpoint

    corpus = h.write_english(tmp_path / "en.txt", 20_000)
    args = [*h.tiny_overrides(GPT, corpus, tmp_path, steps=100_000), "checkpoint.every=2", "log.every=50"]
    env = {**os.environ, "PYTHONPATH": str(h.SRC), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "plmkit", "pretrain", str(GPT), *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        # SIGINT as a shell gives it: a library that ignored SIGINT in this pytest process (an in-process
        # launcher) would hand the ignore on to the child, which would then never see Ctrl-C
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.time() + 120
        while latest_checkpoint(run_dir(tmp_path)) is None and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    command = shlex.join(["plm", "pretrain", str(GPT), *args, "--resume"])
    assert err.splitlines()[-1] == f"interrupted; resume with: {command}", err


def test_a_run_folder_under_a_regular_file_is_one_line(plm, tmp_path):
    (tmp_path / "afile").write_text("x", encoding="utf-8")
    code, _, err = plm(f"out_dir={tmp_path / 'afile' / 'run'}")
    assert code == 2 and err.count("error:") == 1 and "is under" in err and "which is a file" in err
    assert (tmp_path / "afile").read_text(encoding="utf-8") == "x"
