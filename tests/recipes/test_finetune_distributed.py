"""`plm finetune --nproc 2` on CPU (gloo, one thread per process) computes what one process computes with
the same global batch (train.batch_size doubled): per-step losses within 1e-5 in fp32, the same dev
metrics at every evaluation, the same best checkpoint and final metrics, with ddp and with fsdp (whose
<run>/best holds shards and is restored from them). Every rank evaluates the whole dev split; the only
files a rank other than 0 writes are its own shards of an FSDP checkpoint (a Python audit hook in those
processes records every write under the run folder). A killed 2-process run resumes to the same losses,
and a LoRA run trains on 2 processes as on one.

Each launch is a real `plm finetune RECIPE ... --nproc 2` process tree."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from finetune_helpers import classification_files, save_base

import dist_helpers as dh
import train_helpers as h

pytestmark = pytest.mark.dist
STEPS = 16
ALL_STEPS = list(range(1, STEPS + 1))
TIMEOUT = 120  # seconds: a rank waiting on a collective the other never calls fails the test here

# Imported by every process of a launch (it is first on PYTHONPATH): on a rank other than 0, record each
# write under PLMKIT_TEST_WATCH (open for writing, mkdir, rename, remove, copytree, ...) in PLMKIT_TEST_WRITES.
WATCHER = r"""
import os, re, sys

_watch, _log = os.environ.get("PLMKIT_TEST_WATCH"), os.environ.get("PLMKIT_TEST_WRITES")
_WRITTEN = {"os.rename": (0, 1), "os.mkdir": (0,), "os.remove": (0,), "os.rmdir": (0,), "os.truncate": (0,),
            "os.symlink": (1,), "os.link": (1,), "os.chmod": (0,), "os.utime": (0,),
            "shutil.copytree": (1,), "shutil.rmtree": (0,), "shutil.move": (0, 1)}
_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_SHARDS = re.compile(r"/checkpoints/\.step-[^/]+/dcp(/|$)")  # where each FSDP rank writes its own shards
_busy = []


def _written(event, args):
    if event == "open":
        path, mode, flags = args
        writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (flags or 0) & _FLAGS
        return [path] if writes else []
    return [args[i] for i in _WRITTEN.get(event, ())]


def _hook(event, args):
    if _busy or (event != "open" and event not in _WRITTEN):
        return
    _busy.append(1)
    try:
        for path in _written(event, args):
            if isinstance(path, (str, bytes, os.PathLike)):
                path = os.path.abspath(os.fsdecode(path))
                if (path + os.sep).startswith(_watch + os.sep) and not _SHARDS.search(path):
                    with open(_log, "a", encoding="utf-8") as f:
                        f.write(f"rank {os.environ['RANK']}: {event} {path}\n")
    finally:
        _busy.pop()


if _watch and _log and os.environ.get("RANK", "0") != "0":
    _watch = os.path.abspath(_watch)
    sys.addaudithook(_hook)
"""


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ftdist")
    save_base(root / "bert")  # dropout 0: the runs are comparable
    classification_files(root)
    (root / "recipe.yaml").write_text(
        f"name: finetune\ninit_from: {root / 'bert'}\n"
        f"data: {{train: {root / 'train.tsv'}, dev: {root / 'dev.tsv'}, columns: {{text: sentence, label: label}}}}\n",
        encoding="utf-8",
    )
    (root / "watcher").mkdir()
    (root / "watcher" / "sitecustomize.py").write_text(WATCHER, encoding="utf-8")
    return root


def overrides(root: Path, name: str, batch: int, *extra: str) -> list[str]:
    """16 steps of `batch` rows per process, dev metrics every 2 steps (the best is step 8's, not the last)."""
    return [
        f"out_dir={root / 'runs' / name}",
        f"train.steps={STEPS}",
        "epochs=null",
        f"train.batch_size={batch}",
        "schedule.warmup_steps=0",
        "schedule.kind=cosine",
        "schedule.min_lr_ratio=0.1",
        "optim.lr=5e-3",
        "optim.weight_decay=0.1",
        "optim.betas=[0.9, 0.95]",
        "eval.every=2",
        "checkpoint.every=0",
        "log.every=1",
        "task.max_length=32",
        "task.batch_size=16",
        *h.COMMON,
        *extra,
    ]


def run_single(root: Path, name: str, *extra: str) -> dict:
    """The 1-process reference with the 2-process run's global batch, in this process."""
    from plmkit.config import load_config
    from plmkit.recipes.finetune import FinetuneConfig, finetune

    config = load_config(FinetuneConfig, root / "recipe.yaml", overrides(root, name, 16, *extra))
    return finetune(config, stream=io.StringIO())


def launch(root: Path, name: str, *extra: str, flags: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """`plm finetune RECIPE ... --nproc 2` with 8 rows per process; the ranks' writes are watched."""
    writes = root / f"{name}.writes"
    env = dh.environment(
        PYTHONPATH=":".join([str(root / "watcher"), str(h.SRC), str(dh.TESTS)]),
        PLMKIT_TEST_WATCH=str(root / "runs" / name),
        PLMKIT_TEST_WRITES=str(writes),
    )
    command = [sys.executable, "-m", "plmkit", "finetune", str(root / "recipe.yaml")]
    command += [*overrides(root, name, 8, *extra), *flags, "--nproc", "2"]
    try:
        proc = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"plm finetune --nproc 2 did not finish in {TIMEOUT} s (a deadlock?):\n{e.stderr!r}")
    return dh.succeeded(proc)


def dev_metrics_by_step(run: Path) -> dict[int, dict[str, float]]:
    return {
        r["step"]: {k: v for k, v in r.items() if k.startswith("dev_")}
        for r in h.read_metrics(run)
        if any(k.startswith("dev_") for k in r)
    }


def assert_same_dev_metrics(run: Path, reference: Path) -> None:
    """The same dev metrics (to float summation order) at every evaluation: every 2 steps and the end."""
    got, want = dev_metrics_by_step(run), dev_metrics_by_step(reference)
    assert sorted(got) == [*range(2, STEPS + 1, 2)] and got.keys() == want.keys()
    for step in got:
        assert got[step] == pytest.approx(want[step], abs=1e-9), step


def rank_writes(root: Path, name: str) -> list[str]:
    path = root / f"{name}.writes"
    return path.read_text(encoding="utf-8").splitlines() if path.is_file() else []


def assert_same_run(run: Path, reference: Path) -> None:
    """Losses within 1e-5; every evaluation, the best, the final metrics and the predictions the same."""
    dh.assert_same_losses(h.losses_by_step(run), h.losses_by_step(reference), ALL_STEPS)
    assert_same_dev_metrics(run, reference)
    summary = json.loads((run / "metrics.json").read_text())
    expected = json.loads((reference / "metrics.json").read_text())
    assert summary["step"] == expected["step"] == STEPS
    assert summary["evaluated"] == expected["evaluated"] == "best"
    for key in ("final_dev", "dev"):
        assert summary[key] == pytest.approx(expected[key], abs=1e-9), key
    assert summary["best"] == pytest.approx(expected["best"], abs=1e-9)
    assert summary["best"]["step"] == 8 and summary["dev"] != summary["final_dev"]  # best restored
    assert (run / "dev_predictions.jsonl").read_text() == (reference / "dev_predictions.jsonl").read_text()
    best = json.loads((run / "best" / "dev_metrics.json").read_text())
    assert best["step"] == 8 and best["accuracy"] == summary["dev"]["accuracy"]


@pytest.fixture(scope="module")
def single(root) -> Path:
    run_single(root, "single", "checkpoint.every=8", "checkpoint.keep_last=0")
    return root / "runs" / "single"


@pytest.fixture(scope="module")
def ddp(root) -> tuple[Path, subprocess.CompletedProcess]:
    proc = launch(root, "ddp", "distributed.strategy=ddp", "checkpoint.every=8", "checkpoint.keep_last=0")
    return root / "runs" / "ddp", proc


def test_ddp_two_processes_equal_one_process(root, single, ddp, capsys):
    run, proc = ddp
    assert_same_run(run, single)
    # one run folder, the files of a 1-process run; rank 1 wrote nothing into it; rank 0 alone printed
    names = sorted(p.name for p in run.iterdir())
    assert names == sorted(p.name for p in single.iterdir())
    assert names == [
        "best",
        "checkpoints",
        "dev_predictions.jsonl",
        "metrics.json",
        "metrics.jsonl",
        "recipe.json",
    ]
    assert rank_writes(root, "ddp") == []
    assert proc.stdout.count("run finetune ->") == 1 and proc.stdout.count('{"checkpoint": ') == 1
    assert "x 8 rows x 2 processes" in proc.stdout and "ddp on 2 process(es), gloo" in proc.stdout
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["dev"] == json.loads((run / "metrics.json").read_text())["dev"]
    state = json.loads((run / "checkpoints" / "step-00000016" / "trainer_state.json").read_text())
    assert state["distributed"] == {"strategy": "ddp", "world_size": 2, "layout": "plain"}
    # the best folder is an ordinary checkpoint: plm evaluate gives the run's (best) dev metrics
    code, _, err = h.run_cli(
        ["evaluate", run / "best", "--data", root / "dev.tsv", "--out", root / "eval-ddp"], capsys
    )
    assert code == 0, err
    evaluated = json.loads((root / "eval-ddp" / "metrics.json").read_text())
    assert evaluated["accuracy"] == json.loads((run / "metrics.json").read_text())["dev"]["accuracy"]


def test_fsdp_two_processes_equal_one_process(root, single, capsys):
    launch(root, "fsdp", "distributed.strategy=fsdp")
    run = root / "runs" / "fsdp"
    assert_same_run(run, single)  # the dev metrics of the best: restored from its shards on both ranks
    best = run / "best"
    assert (best / "dcp" / ".metadata").is_file() and not (best / "model.safetensors").exists()
    assert rank_writes(root, "fsdp") == []  # rank 1 wrote its checkpoint shards, nothing else
    shard = run / "checkpoints" / "step-00000016" / "dcp" / "__1_0.distcp"
    assert shard.is_file()  # ... and it did write them
    # the sharded best, made one file, evaluates to the run's dev metrics (the task named again: the
    # converted folder has the weights, labels and tokenizer, not the recipe)
    code, _, err = h.run_cli(["convert", "--from-sharded", best, "--out", root / "fsdp-best"], capsys)
    assert code == 0, err
    code, _, err = h.run_cli(
        ["evaluate", root / "fsdp-best", "task.max_length=32", "data.columns={text: sentence, label: label}"]
        + ["--task", "classification", "--data", root / "dev.tsv", "--out", root / "eval-fsdp"],
        capsys,
    )
    assert code == 0, err
    evaluated = json.loads((root / "eval-fsdp" / "metrics.json").read_text())
    assert evaluated["accuracy"] == json.loads((run / "metrics.json").read_text())["dev"]["accuracy"]


def test_a_killed_two_process_run_resumes_to_the_same_losses(root, ddp):
    """The ddp run as if killed after its step-8 checkpoint (step 16's removed, no metrics.json yet), then
    `--resume` from step 8 on 2 processes: the same losses, dev metrics and final metrics."""
    whole, _ = ddp
    killed = root / "runs" / "killed"
    shutil.copytree(whole, killed)
    shutil.rmtree(killed / "checkpoints" / "step-00000016")
    for name in ("metrics.json", "dev_predictions.jsonl"):
        (killed / name).unlink()
    proc = launch(
        root, "killed", "distributed.strategy=ddp", "checkpoint.every=8", "checkpoint.keep_last=0",
        flags=(f"--resume={killed / 'checkpoints' / 'step-00000008'}",),
    )  # fmt: skip
    assert "resumed from step 8" in proc.stdout
    dh.assert_same_losses(h.losses_by_step(killed), h.losses_by_step(whole), ALL_STEPS)
    assert_same_dev_metrics(killed, whole)
    summary, expected = (json.loads((r / "metrics.json").read_text()) for r in (killed, whole))
    assert {k: summary[k] for k in ("best", "final_dev", "dev")} == {
        k: expected[k] for k in ("best", "final_dev", "dev")
    }
    assert rank_writes(root, "killed") == []


def test_lora_on_two_processes_equals_one_process(root):
    """QLoRA (int8 base + LoRA): only the LoRA factors and the head are in DDP's gradient buckets."""
    peft = ["peft={method: lora, r: 4, target: all-linear}", "quantize.mode=int8"]
    run_single(root, "lora-single", *peft)
    launch(root, "lora-ddp", "distributed.strategy=ddp", *peft)
    run, reference = root / "runs" / "lora-ddp", root / "runs" / "lora-single"
    dh.assert_same_losses(h.losses_by_step(run), h.losses_by_step(reference), ALL_STEPS)
    assert_same_dev_metrics(run, reference)
    assert (
        json.loads((run / "metrics.json").read_text())["dev"]
        == json.loads((reference / "metrics.json").read_text())["dev"]
    )
