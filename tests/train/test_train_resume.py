"""Kill and resume (issue 5): a run SIGKILLed at a random step and resumed with `--resume` logs the same
per-step losses as an uninterrupted run, bit for bit (CPU, fp32, dropout on); a run killed while writing
a checkpoint leaves the previous checkpoint as the latest one, and resuming from it is just as exact.

The run killed at a random step is a real `python -m plmkit pretrain` process; the one killed while
writing a checkpoint is a fork of the test process with a fault installed (tests/train_runner.py runs
the same fault from the command line); the uninterrupted run and the resumes (`plm pretrain ... --resume`)
run in this process."""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import train_helpers as h
from plmkit.errors import CheckpointError
from plmkit.train.checkpoint import TRAINER_FILE, latest_checkpoint, list_checkpoints, load_training_state

GPT = h.ROOT / "recipes" / "gpt-clm.yaml"
STEPS, EVERY = 60, 5
KILL_SEED = 20240605  # the "random" step is drawn from this seed: a failure reproduces
COMPARED = ("step", "loss", "lr", "tokens", "skipped_steps", "val_loss", "val_ppl")


def overrides(root: Path, out_dir: Path) -> list[str]:
    return h.tiny_overrides(GPT, root / "en.txt", root, steps=STEPS) + [
        "model.n_layer=2",
        "model.d_model=64",
        "model.n_head=4",
        "model.d_ff=256",
        "model.dropout=0.1",
        "data.block_size=64",
        "train.batch_size=8",
        f"checkpoint.every={EVERY}",
        "checkpoint.keep_last=3",
        "eval.every=20",
        f"tokenizer.path={root / 'tokenizer'}",
        f"out_dir={out_dir}",
    ]


def start(root: Path, out_dir: Path, runner: list[str], env: dict | None = None) -> subprocess.Popen:
    environment = {**os.environ, "PYTHONPATH": str(h.SRC), "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.Popen(
        [sys.executable, *runner, "pretrain", str(GPT), *overrides(root, out_dir)],
        env=environment,
        cwd=root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A shared tokenizer and token store, then two training processes at once: `python -m plmkit pretrain`
    to be killed at a random step, and one that dies while writing its second checkpoint."""
    from plmkit.config import load_config
    from plmkit.recipes.common import build_recipe_data
    from plmkit.recipes.config import RecipeConfig
    from plmkit.tokenizer import Tokenizer

    root = tmp_path_factory.mktemp("resume")
    h.write_english(root / "en.txt", 60_000)
    tokenizer = Tokenizer.train([h.english_text(60_000)], kind="bpe", vocab_size=400)
    tokenizer.save(root / "tokenizer")
    build_recipe_data(load_config(RecipeConfig, GPT, overrides(root, root / "warm")), tokenizer)  # cache
    killed = start(root, root / "killed", ["-m", "plmkit"])
    # A fork of this process (torch already imported: no start-up cost) with the fault installed.
    torn = multiprocessing.get_context("fork").Process(
        target=die_writing_second_checkpoint, args=(["pretrain", str(GPT), *overrides(root, root / "torn")],)
    )
    torn.start()
    yield root, {"killed": killed, "torn": torn}
    if killed.poll() is None:
        killed.kill()
    killed.wait()
    torn.join(timeout=60)


def die_writing_second_checkpoint(argv: list[str]) -> None:
    """In the forked child: `plm pretrain` that SIGKILLs itself half way through writing the training
    state of its second checkpoint (see train_runner.py)."""
    import train_runner
    from plmkit.cli import main

    train_runner.install_fault(2)
    os._exit(main(argv))


@pytest.fixture(scope="module")
def uninterrupted(runs):
    """The uninterrupted run's metrics rows (computed once, in this process)."""
    cache: list[list[dict]] = []

    def rows(capsys) -> list[dict]:
        if not cache:
            root, _ = runs
            result = run_in_process(capsys, root, root / "baseline")
            assert result["step"] == STEPS
            cache.append(h.read_metrics(root / "baseline"))
            assert [r["step"] for r in cache[0] if "loss" in r] == list(range(1, STEPS + 1))
        return cache[0]

    return rows


def finished(proc: subprocess.Popen, timeout: float = 120) -> int:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("a training subprocess did not finish")
    return proc.returncode


def run_in_process(capsys, root: Path, out_dir: Path, *extra: str) -> dict:
    code, out, err = h.run_cli(["pretrain", GPT, *overrides(root, out_dir), *extra], capsys)
    assert code == 0, err
    return json.loads(out.strip().splitlines()[-1])


def compared(rows: list[dict]) -> list[dict]:
    return [{k: r[k] for k in COMPARED if k in r} for r in rows]


def kill_when_logged(proc: subprocess.Popen, run_dir: Path, step: int, timeout: float = 120) -> None:
    """SIGKILL `proc` as soon as metrics.jsonl shows `step` (polls every few milliseconds)."""
    deadline = time.time() + timeout
    while proc.poll() is None and time.time() < deadline:
        steps = [r["step"] for r in h.read_metrics(run_dir) if "loss" in r]
        if steps and steps[-1] >= step:
            os.kill(proc.pid, signal.SIGKILL)
            return
        time.sleep(0.003)


def test_sigkill_at_a_random_step_then_resume_matches_the_uninterrupted_run(runs, uninterrupted, capsys):
    root, procs = runs
    kill_at = random.Random(KILL_SEED).randint(EVERY + 2, 40)  # after the first checkpoint, mid-run
    proc, run_dir = procs["killed"], root / "killed"
    killer = threading.Thread(target=kill_when_logged, args=(proc, run_dir, kill_at), daemon=True)
    killer.start()
    want = uninterrupted(capsys)  # meanwhile, the uninterrupted run in this process
    killer.join()
    assert finished(proc) == -signal.SIGKILL, f"the run ended before step {kill_at}: {proc.stderr.read()}"
    logged = max(r["step"] for r in h.read_metrics(run_dir) if "loss" in r)
    assert kill_at <= logged < STEPS, f"killed at step {logged}, aimed at {kill_at}"
    checkpoint = latest_checkpoint(run_dir)
    assert checkpoint is not None
    resumed_from = json.loads((checkpoint / TRAINER_FILE).read_text(encoding="utf-8"))["step"]
    assert resumed_from % EVERY == 0 and resumed_from <= logged

    result = run_in_process(capsys, root, run_dir, "--resume")
    assert result["step"] == STEPS
    got = h.read_metrics(run_dir)
    assert compared(got) == compared(want), f"killed at step {logged}, resumed from {resumed_from}"


def test_a_kill_while_writing_a_checkpoint_keeps_the_previous_one(runs, uninterrupted, capsys):
    root, procs = runs
    run_dir = root / "torn"
    procs["torn"].join(timeout=120)
    assert procs["torn"].exitcode == -signal.SIGKILL
    checkpoints = run_dir / "checkpoints"
    # the step-10 checkpoint was being assembled: only a stale temporary folder is left
    stale = [p for p in checkpoints.iterdir() if p.name.startswith(".step-00000010.tmp-")]
    assert len(stale) == 1, sorted(p.name for p in checkpoints.iterdir())
    with pytest.raises(CheckpointError):  # the torn training state really is unreadable
        load_training_state(stale[0])
    assert [p.name for p in list_checkpoints(run_dir)] == ["step-00000005"]
    assert latest_checkpoint(run_dir) == checkpoints / "step-00000005"
    load_training_state(checkpoints / "step-00000005")  # the previous one is complete

    result = run_in_process(capsys, root, run_dir, "--resume")
    assert result["step"] == STEPS
    assert compared(h.read_metrics(run_dir)) == compared(uninterrupted(capsys))
    assert latest_checkpoint(run_dir) == checkpoints / f"step-{STEPS:08d}"
    assert len(list_checkpoints(run_dir)) == 3  # keep_last, the stale folder not counted


# ---- in-process checks of the checkpoint folder rules --------------------------------------------
def tiny_config(tmp_path: Path, corpus: Path, *extra: str):
    from plmkit.config import load_config
    from plmkit.recipes.config import RecipeConfig

    return load_config(RecipeConfig, GPT, h.tiny_overrides(GPT, corpus, tmp_path, steps=4) + list(extra))


def test_incomplete_and_temporary_checkpoint_folders_are_ignored(tmp_path):
    from plmkit.recipes.pretrain import pretrain

    corpus = h.write_english(tmp_path / "en.txt", 20_000)
    config = tiny_config(tmp_path, corpus, "checkpoint.every=2", "checkpoint.keep_last=5")
    pretrain(config, stream=io.StringIO())
    run_dir = Path(config.run_dir)
    folder = run_dir / "checkpoints"
    assert [p.name for p in list_checkpoints(run_dir)] == ["step-00000002", "step-00000004"]
    # a complete-looking temporary folder (a writer died just before the rename) and a later step
    # folder without trainer_state.json (written last) are not checkpoints
    shutil.copytree(folder / "step-00000004", folder / ".step-00000006.tmp-99999")
    shutil.copytree(folder / "step-00000004", folder / "step-00000008")
    (folder / "step-00000008" / TRAINER_FILE).unlink()
    assert latest_checkpoint(run_dir) == folder / "step-00000004"


def test_resume_true_without_a_checkpoint_starts_from_scratch(tmp_path, capsys):
    corpus = h.write_english(tmp_path / "en.txt", 20_000)
    args = ["pretrain", GPT, *h.tiny_overrides(GPT, corpus, tmp_path, steps=3)]
    code, out, err = h.run_cli([*args, "--resume"], capsys)
    assert code == 0, err
    assert json.loads(out.strip().splitlines()[-1])["step"] == 3


def test_a_torn_last_metrics_line_does_not_break_resume(tmp_path):
    """A kill can cut metrics.jsonl mid-line; the resumed run drops the partial row."""
    from plmkit.recipes.pretrain import pretrain

    corpus = h.write_english(tmp_path / "en.txt", 20_000)
    config = tiny_config(tmp_path, corpus, "checkpoint.every=2")
    pretrain(config, stream=io.StringIO())
    run_dir = Path(config.run_dir)
    metrics = run_dir / "metrics.jsonl"
    with open(metrics, "a", encoding="utf-8") as f:
        f.write('{"step": 5, "loss": 4.2')  # no newline: the writer died here
    resumed = tiny_config(tmp_path, corpus, "checkpoint.every=2", "train.steps=6", "resume=true")
    result = pretrain(resumed, stream=io.StringIO())
    assert result["step"] == 6
    steps = [r["step"] for r in h.read_metrics(run_dir) if "loss" in r]
    assert steps == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize(
    "kind, family",
    [
        ("bpe", None),
        ("wordpiece", "bert"),
        ("unigram", "t5"),
    ],
)
def test_a_run_uses_the_tokenizer_it_saved(kind, family, tmp_path):
    """The first start of a run and every resume must tokenize identically (same token-store key)."""
    from plmkit.data import SourceSpec
    from plmkit.data.store import cache_key
    from plmkit.recipes.inputs import build_tokenizer
    from plmkit.tokenizer import Tokenizer

    corpus = h.write_english(tmp_path / "en.txt", 30_000)
    overrides = [f"tokenizer.kind={kind}", "tokenizer.vocab_size=400"]
    if family:
        overrides.append(f"tokenizer.family={family}")
    config = tiny_config(tmp_path, corpus, *overrides)
    run_dir = Path(config.run_dir)
    first = build_tokenizer(config, run_dir)  # trains and saves run_dir/tokenizer
    resumed = build_tokenizer(config, run_dir)  # loads it
    assert isinstance(resumed, Tokenizer)
    spec = [SourceSpec(path=str(corpus))]
    files = [[corpus]]
    assert cache_key(spec, files, first, False) == cache_key(spec, files, resumed, False)


def test_resume_from_a_checkpoint_of_another_run_folder(tmp_path):
    from plmkit.recipes.pretrain import pretrain

    corpus = h.write_english(tmp_path / "en.txt", 20_000)
    first = tiny_config(tmp_path, corpus, "checkpoint.every=2", f"out_dir={tmp_path / 'a'}")
    pretrain(first, stream=io.StringIO())
    checkpoint = tmp_path / "a" / "checkpoints" / "step-00000004"
    branch = tiny_config(
        tmp_path,
        corpus,
        "train.steps=6",
        f"out_dir={tmp_path / 'b'}",
        f"resume={checkpoint}",
        f"tokenizer.path={tmp_path / 'a' / 'tokenizer'}",
    )
    stream = io.StringIO()
    result = pretrain(branch, stream=stream)
    assert result["step"] == 6
    assert f"resumed from step 4 ({checkpoint})" in stream.getvalue()
    assert [r["step"] for r in h.read_metrics(tmp_path / "b") if "loss" in r] == [5, 6]


def test_a_checkpoint_of_an_older_plmkit_resumes(tmp_path):
    """plmkit.json written before a model key existed (here the mixture-of-experts keys): the missing keys
    take their defaults, as a load reads them, instead of "a different architecture"."""
    from plmkit.recipes.pretrain import pretrain

    corpus = h.write_english(tmp_path / "en.txt", 20_000)
    pretrain(
        tiny_config(tmp_path, corpus, "checkpoint.every=2", f"out_dir={tmp_path / 'a'}"), stream=io.StringIO()
    )
    checkpoint = tmp_path / "a" / "checkpoints" / "step-00000004"
    header_file = checkpoint / "plmkit.json"
    header = json.loads(header_file.read_text(encoding="utf-8"))
    for key in ("top_k", "n_shared_experts", "shared_expert_gate", "shared_expert_d_ff", "capacity_factor"):
        header["model"].pop(key)
    header_file.write_text(json.dumps(header), encoding="utf-8")
    resumed = tiny_config(
        tmp_path, corpus, "train.steps=6", f"out_dir={tmp_path / 'a'}", f"resume={checkpoint}"
    )
    assert pretrain(resumed, stream=io.StringIO())["step"] == 6
