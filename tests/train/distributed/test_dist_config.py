"""The distributed section of a recipe without spawning processes: strategy names, the DeepSpeed JSON
generated from the recipe, bad --nproc values, how a global batch is split into the ranks' rows, and the
strategies run in this process as a group of one (ddp / fsdp equal the plain run; FSDP checkpoints are
sharded, need conversion, and refuse the wrong strategy)."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import dist_helpers as dh
import train_helpers as h
from plmkit.config import load_config
from plmkit.errors import CheckpointError, ConfigError
from plmkit.recipes.common import recipe_strategy_name
from plmkit.recipes.config import RecipeConfig
from plmkit.train.distributed.base import Strategy
from plmkit.train.distributed.world import World

GPT = dh.GPT


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist-config")
    dh.prepare(root)
    return root


def recipe(*overrides: str) -> RecipeConfig:
    return load_config(RecipeConfig, GPT, list(overrides))


def assert_user_error(code: int, err: str, *needles: str) -> str:
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    return lines[0]


def sections(config, with_optim: bool = False):
    """deepspeed_config's (train, optim, deepspeed) sections; check_deepspeed_config's (deepspeed, train, optim)."""
    if with_optim:
        return config.distributed.deepspeed, config.train, config.optim
    return config.train, config.optim, config.distributed.deepspeed


# ---- strategy names and launch checks -----------------------------------------------------------
def test_unknown_strategy_suggests_the_closest(root, capsys):
    code, _, err = h.run_cli(
        ["pretrain", GPT, *dh.overrides(root, "typo", batch=8), "distributed.strategy=fsdb"], capsys
    )
    assert_user_error(code, err, 'distributed.strategy="fsdb"', 'did you mean "fsdp"')
    code, _, err = h.run_cli(
        ["pretrain", GPT, *dh.overrides(root, "typo", batch=8), "distributed.strategi=ddp"], capsys
    )
    assert_user_error(code, err, 'did you mean "distributed.strategy"')


def test_auto_is_single_in_one_process_and_ddp_under_torchrun():
    assert recipe_strategy_name(recipe(), World()) == "single"
    assert recipe_strategy_name(recipe(), World(1, 2, 1, launched=True)) == "ddp"
    assert recipe_strategy_name(recipe("distributed.strategy=fsdp"), World()) == "fsdp"  # a group of one
    with pytest.raises(ConfigError, match="strategy=single, but this is one of 2 processes"):
        recipe_strategy_name(recipe("distributed.strategy=single"), World(0, 2, 0, launched=True))


def test_torchrun_environment_is_read_and_checked(monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert World.from_env() == World(1, 2, 1, launched=True)
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(ConfigError, match="RANK=2 is not below WORLD_SIZE=2"):
        World.from_env()
    monkeypatch.delenv("RANK")
    assert World.from_env() == World()  # not all of torchrun's variables: one process


@pytest.mark.parametrize("value", ["0", "-2", "two", "1.5", ""])
def test_bad_nproc_is_one_error_line(root, capsys, value):
    code, out, err = h.run_cli(
        ["pretrain", GPT, *dh.overrides(root, "bad-nproc", batch=8), "--nproc", value], capsys
    )
    assert_user_error(code, err, "--nproc=", "must be", ">= 1")  # the wording of every ranged option
    assert not (root / "bad-nproc").exists()  # nothing started


def test_nproc_checks_before_starting_anything(root, capsys, monkeypatch):
    args = ["pretrain", GPT, *dh.overrides(root, "no-start", batch=8)]
    code, _, err = h.run_cli([*args, "distributed.strategy=single", "--nproc", "2"], capsys)
    assert_user_error(code, err, "strategy=single", "ddp, fsdp or deepspeed")
    code, _, err = h.run_cli([*args, "distributed.strategy=fsdb", "--nproc", "2"], capsys)
    assert_user_error(code, err, 'did you mean "fsdp"')
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "already-under-torchrun")
    code, _, err = h.run_cli([*args, "--nproc", "2"], capsys)
    assert_user_error(code, err, "drop --nproc")
    assert not (root / "no-start").exists()


def test_nproc_1_is_the_plain_run(root, capsys):
    code, out, err = h.run_cli(
        ["pretrain", GPT, *dh.overrides(root, "nproc1", batch=8), "--nproc", "1"], capsys
    )
    assert code == 0, err
    dh.run_single(root, "plain", batch=8)
    dh.assert_same_losses(dh.losses(root / "nproc1"), dh.losses(root / "plain"), [1, 2, 3, 4])


# ---- the ranks' rows of a global batch -----------------------------------------------------------
def test_local_rows_split_a_global_batch():
    batch = {"input_ids": torch.arange(16).view(8, 2), "labels": torch.arange(16).view(8, 2)}
    rows = [Strategy(World(r, 2, r, True)).local_rows(batch)["input_ids"][:, 0].tolist() for r in range(2)]
    assert rows == [[0, 2, 4, 6], [8, 10, 12, 14]]  # rank r: rows [r*B, (r+1)*B), as one process orders them
    assert Strategy().local_rows(batch) is batch
    short = {k: v[:3] for k, v in batch.items()}  # a last validation batch of 3 rows over 4 ranks
    shares = [Strategy(World(r, 4, r, True)).local_rows(short) for r in range(4)]
    assert [s["input_ids"].shape[0] for s in shares] == [1, 1, 1, 1]
    assert [bool((s["labels"] != -100).any()) for s in shares] == [
        False,
        True,
        True,
        True,
    ]  # rank 0: a stand-in
    with pytest.raises(ConfigError, match="'scale' has shape \\[\\]"):
        Strategy(World(0, 2, 0, True)).local_rows({**batch, "scale": torch.tensor(1.0)})


# ---- DeepSpeed JSON from the recipe ----------------------------------------------------------------
def test_deepspeed_config_is_generated_from_the_recipe():
    from plmkit.train.distributed.deepspeed import deepspeed_config

    config = recipe(
        "train.batch_size=4",
        "train.accumulation=3",
        "train.clip_grad=0.5",
        "optim.lr=2e-4",
        "optim.betas=[0.9, 0.98]",
        "optim.eps=1e-6",
        "optim.weight_decay=0.05",
        "distributed.deepspeed.stage=3",
        "distributed.deepspeed.offload_optimizer=true",
        "distributed.deepspeed.offload_params=true",
    )
    ds = deepspeed_config(*sections(config), world_size=8, precision="bf16", device_type="cuda")
    assert ds["train_micro_batch_size_per_gpu"] == 4 and ds["gradient_accumulation_steps"] == 3
    assert ds["train_batch_size"] == 4 * 3 * 8
    assert ds["gradient_clipping"] == 0.5
    assert ds["optimizer"] == {
        "type": "AdamW",
        "params": {"lr": 2e-4, "betas": [0.9, 0.98], "eps": 1e-6, "weight_decay": 0.05, "torch_adam": False},
    }
    assert ds["zero_optimization"] == {
        "stage": 3,
        "offload_optimizer": {"device": "cpu", "pin_memory": True},
        "offload_param": {"device": "cpu", "pin_memory": True},
    }
    assert ds["bf16"] == {"enabled": True} and ds["fp16"] == {"enabled": False}
    assert "scheduler" not in ds  # plmkit's LambdaLR drives the engine's AdamW

    cpu = deepspeed_config(
        *sections(recipe("train.clip_grad=null")), world_size=2, precision="fp32", device_type="cpu"
    )
    assert cpu["gradient_clipping"] == 0.0 and cpu["optimizer"]["params"]["torch_adam"] is True
    assert (
        cpu["zero_optimization"] == {"stage": 2} and not cpu["bf16"]["enabled"] and not cpu["fp16"]["enabled"]
    )
    assert cpu["train_batch_size"] == 16 * 1 * 2  # the recipe's batch_size 16, accumulation 1
    fp16 = deepspeed_config(*sections(recipe()), world_size=1, precision="fp16", device_type="cuda")
    assert fp16["fp16"] == {"enabled": True, "loss_scale": 0, "initial_scale_power": 16}


def test_deepspeed_options_add_keys_but_never_replace_generated_ones():
    from plmkit.train.distributed.deepspeed import deepspeed_config

    extra = (
        "distributed.deepspeed.options={zero_optimization: {overlap_comm: true, reduce_bucket_size: 1000}, "
        "bf16: {immediate_grad_update: true}, activation_checkpointing: {partition_activations: false}}"
    )
    ds = deepspeed_config(*sections(recipe(extra)), 2, "bf16", "cuda")
    assert ds["zero_optimization"] == {"stage": 2, "overlap_comm": True, "reduce_bucket_size": 1000}
    assert ds["bf16"] == {"enabled": True, "immediate_grad_update": True}
    assert ds["activation_checkpointing"] == {"partition_activations": False}
    for key, source in [
        ("{train_batch_size: 64}", "train.batch_size"),
        ("{zero_optimization: {stage: 3}}", "distributed.deepspeed.stage"),
        ("{optimizer: {type: Adam}}", "optim.lr"),
        ("{scheduler: {type: WarmupLR}}", "schedule."),
        ("{fp16: {enabled: true}}", "train.precision"),
    ]:
        with pytest.raises(ConfigError, match="is generated from") as e:
            deepspeed_config(*sections(recipe(f"distributed.deepspeed.options={key}")), 2, "fp32", "cpu")
        assert source in str(e.value) and "distributed.deepspeed.options." in str(e.value)


def test_deepspeed_settings_are_checked():
    from plmkit.train.distributed.deepspeed import check_deepspeed_config

    cpu = torch.device("cpu")
    with pytest.raises(ConfigError, match="stage=4"):
        check_deepspeed_config(*sections(recipe("distributed.deepspeed.stage=4"), with_optim=True), cpu)
    with pytest.raises(ConfigError, match="offload_params needs ZeRO stage 3"):
        check_deepspeed_config(
            *sections(recipe("distributed.deepspeed.offload_params=true"), with_optim=True), cpu
        )
    with pytest.raises(ConfigError, match="train.compile=true"):
        check_deepspeed_config(*sections(recipe("train.compile=true"), with_optim=True), cpu)


def test_missing_deepspeed_names_the_extra(root, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "deepspeed", None)  # `import deepspeed` now raises ImportError
    code, _, err = h.run_cli(
        ["pretrain", GPT, *dh.overrides(root, "no-ds", batch=8), "distributed.strategy=deepspeed"], capsys
    )
    assert_user_error(code, err, "needs the deepspeed package", "pip install 'plmkit[deepspeed]'")


def test_a_deepspeed_checkpoint_resumes_on_its_own_number_of_processes_only(tmp_path):
    from plmkit.train.distributed.deepspeed import check_same_world

    info = {"distributed": {"strategy": "deepspeed", "world_size": 2, "layout": "deepspeed"}}
    check_same_world(tmp_path, info, 2)
    with pytest.raises(ConfigError, match="partitioned over 2; resume with --nproc 2") as e:
        check_same_world(tmp_path, info, 4)
    assert "plm convert --from-sharded" in str(e.value)


def test_fsdp_refuses_fp16():
    from plmkit.train.distributed.fsdp import check_fsdp_config

    check_fsdp_config("bf16", recipe().optim)
    with pytest.raises(ConfigError, match="use train.precision=bf16"):
        check_fsdp_config("fp16", recipe().optim)


def test_deepspeed_step_logic_skips_or_refuses_a_non_finite_step():
    """The engine cannot drop reduced gradients: the ranks agree before each backward, a bad first
    micro-batch skips the step, a bad later one (gradients already reduced) is a clear error."""
    from plmkit.train.distributed.deepspeed import DeepSpeedStrategy
    from plmkit.train.errors import TrainingError

    calls: list[str] = []
    strategy = DeepSpeedStrategy(World(), torch.device("cpu"), {}, recipe().optim, Path("."))
    strategy.engine = SimpleNamespace(
        backward=lambda loss, scale_wrt_gas: calls.append(f"backward {scale_wrt_gas}"),
        step=lambda: calls.append("step"),
    )
    strategy.pending = False
    others_bad = {"flag": 0.0}
    strategy.sum_over_ranks = lambda *v: (v[0] + others_bad["flag"],)  # the other ranks' votes
    assert strategy.backward(torch.tensor(1.0), None, finite=True)
    strategy.step(None, None)
    assert calls == ["backward False", "step"]
    others_bad["flag"] = 1.0  # another rank's first micro-batch was nan: nobody runs backward, no step
    assert not strategy.backward(torch.tensor(1.0), None, finite=True)
    strategy.zero_grad(None, stepped=False)
    assert calls == ["backward False", "step"]
    others_bad["flag"] = 0.0
    assert strategy.backward(torch.tensor(1.0), None, finite=True)
    assert not strategy.backward(torch.tensor(math.nan), None, finite=False)
    with pytest.raises(TrainingError, match="cannot drop"):
        strategy.zero_grad(None, stepped=False)


# ---- the strategies in this process, as a group of one -------------------------------------------
def test_one_process_ddp_and_fsdp_equal_the_plain_run(root):
    import torch.distributed as dist

    dh.run_single(root, "plain-acc", batch=8, accumulation=2)
    plain = dh.losses(root / "plain-acc")
    for name in ("ddp", "fsdp"):
        dh.run_single(root, f"one-{name}", f"distributed.strategy={name}", batch=8, accumulation=2)
        assert not dist.is_initialized()  # the group of one is gone again
        dh.assert_same_losses(dh.losses(root / f"one-{name}"), plain, [1, 2, 3, 4])
    state = h.read_metrics(root / "one-fsdp")
    assert state and (dh.checkpoint(root / "one-fsdp", 4) / "dcp").is_dir()
    assert not (dh.checkpoint(root / "one-fsdp", 4) / "model.safetensors").exists()
    assert (dh.checkpoint(root / "one-ddp", 4) / "model.safetensors").is_file()


def test_sharded_checkpoints_need_conversion_and_the_right_strategy(root, capsys):
    import torch.distributed as dist

    import plmkit

    sharded = dh.checkpoint(root / "one-fsdp", 4)
    if not sharded.is_dir():
        dh.run_single(root, "one-fsdp", "distributed.strategy=fsdp", batch=8, accumulation=2)
    with pytest.raises(CheckpointError, match="sharded training checkpoint .*plm convert --from-sharded"):
        plmkit.load(sharded)
    code, _, err = h.run_cli(["generate", "--model", sharded, "--prompt", "The"], capsys)
    assert_user_error(code, err, "--from-sharded")
    # a plain checkpoint into an FSDP run: refused with the way out, and the process group is closed again
    plain = dh.checkpoint(root / "plain", 4)
    if not plain.is_dir():
        dh.run_single(root, "plain", batch=8)
    with pytest.raises(
        ConfigError, match="written by strategy single .*resume it with distributed.strategy=single or ddp"
    ):
        dh.run_single(root, "wrong", "distributed.strategy=fsdp", f"resume={plain}", batch=8)
    assert not dist.is_initialized()


def test_a_stale_deepspeed_build_lock_is_named_instead_of_a_silent_hang(tmp_path, monkeypatch):
    from plmkit.train.distributed.deepspeed import STALE_LOCK_SECONDS, check_no_stale_build_lock

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    check_no_stale_build_lock()  # nothing built yet
    lock = tmp_path / "deepspeed_shm_comm" / "lock"
    lock.parent.mkdir()
    lock.touch()
    written = lock.stat().st_mtime
    check_no_stale_build_lock(now=written + 30)  # a compile in progress: wait for it as torch does
    with pytest.raises(
        ConfigError, match=r"deepspeed_shm_comm/lock is a lock left 11 minutes ago.*delete it"
    ):
        check_no_stale_build_lock(now=written + STALE_LOCK_SECONDS + 60)


def test_a_launch_leaves_the_callers_signal_handlers(monkeypatch):
    """torchrun's agent installs SIGINT / SIGTERM handlers of its own; after launch() the caller's are back
    (they leaked into every later in-process test, and into a Python caller's Ctrl-C)."""
    import signal

    from torch.distributed import run as torchrun

    from plmkit.train.distributed.launch import launch

    def agent_run(args) -> None:
        signal.signal(signal.SIGINT, lambda *_: None)
        signal.signal(signal.SIGTERM, lambda *_: None)

    monkeypatch.setattr(torchrun, "run", agent_run)
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    assert launch(2, ["pretrain", "recipe.yaml"]) == 0
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_a_workers_error_file_is_whole_or_absent(tmp_path, monkeypatch):
    """When one worker fails, torchrun terminates the others and parses their error files too: a worker
    stopped halfway through writing its file must leave none (a half-written one made torchrun itself
    crash with JSONDecodeError), and a whole file is what torchrun's ProcessFailure reads."""
    import json

    from torch.distributed.elastic.multiprocessing.errors import ProcessFailure

    from plmkit.train.distributed import launch

    error_file = tmp_path / "error.json"
    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(error_file))
    monkeypatch.setenv("RANK", "1")

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt  # what a signal arriving in the middle of the write looks like

    with monkeypatch.context() as m:
        m.setattr(launch.json, "dumps", stopped)
        with pytest.raises(KeyboardInterrupt):
            launch.report_worker_error("model.n_kv_head=1 is not divisible")
    assert list(tmp_path.iterdir()) == []

    launch.report_worker_error("model.n_kv_head=1 is not divisible")
    failure = ProcessFailure(local_rank=1, pid=1, exitcode=2, error_file=str(error_file))
    assert failure.message["message"] == "model.n_kv_head=1 is not divisible"
    assert json.loads(error_file.read_text())["message"]["message"] == failure.message["message"]


def test_the_launcher_reports_a_workers_user_error_even_when_another_was_terminated_first(
    tmp_path, monkeypatch, capsys
):
    """torchrun's first failure may be a worker it terminated (exit -15) after another raised a user error:
    the launcher prints that error line and exits 2, not 'training process 0 failed with exit code -15'."""
    import json

    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

    from plmkit.train.distributed.launch import launch

    error_file = tmp_path / "error.json"
    error_file.write_text(
        json.dumps({"message": {"message": "bad setting", "extraInfo": {"timestamp": "9"}}})
    )
    failures = {
        0: ProcessFailure(local_rank=0, pid=1, exitcode=-15, error_file=str(tmp_path / "absent.json")),
        1: ProcessFailure(local_rank=1, pid=2, exitcode=2, error_file=str(error_file)),
    }
    failures[0].timestamp = 0  # the terminated one counts as first

    def agent_run(args) -> None:
        raise ChildFailedError("plmkit", failures)

    monkeypatch.setattr(torchrun, "run", agent_run)
    assert launch(2, ["pretrain", "recipe.yaml"]) == 2
    assert capsys.readouterr().err.strip() == "error: bad setting"


def test_a_launch_leaves_no_torchrun_log_folder(monkeypatch):
    """torchrun keeps the workers' error files in a log folder; by default a /tmp/torchelastic_* folder
    that stays after every launch. The launcher gives it a temporary folder and removes it."""
    from pathlib import Path

    from torch.distributed import run as torchrun

    from plmkit.train.distributed.launch import launch

    seen = []

    def agent_run(args) -> None:
        folder = Path(args.log_dir)
        assert folder.is_dir()
        (folder / "run_0" / "attempt_0").mkdir(parents=True)
        (folder / "run_0" / "attempt_0" / "error.json").write_text("{}")
        seen.append(folder)

    monkeypatch.setattr(torchrun, "run", agent_run)
    assert launch(2, ["pretrain", "recipe.yaml"]) == 0
    assert len(seen) == 1 and not seen[0].exists()
