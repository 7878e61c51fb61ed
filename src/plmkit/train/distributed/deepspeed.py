"""DeepSpeed ZeRO through the deepspeed engine (an optional extra: pip install 'plmkit[deepspeed]').

The DeepSpeed JSON is generated from the recipe, never written by hand next to it:

    train.batch_size        -> train_micro_batch_size_per_gpu
    train.accumulation      -> gradient_accumulation_steps (train_batch_size = both x processes)
    train.precision         -> bf16 / fp16 (fp16: DeepSpeed's dynamic loss scaling)
    train.clip_grad         -> gradient_clipping
    optim.*                 -> optimizer AdamW (lr, betas, eps, weight_decay), with plmkit's parameter groups
                               (no decay on biases, norms, embeddings); torch's AdamW on CPU (torch_adam)
    distributed.deepspeed   -> zero_optimization (stage, offload_optimizer, offload_param)
    distributed.deepspeed.options -> any other DeepSpeed key (e.g. zero_optimization.overlap_comm);
                               a key generated from the recipe is refused there, naming the recipe key

The run writes it to RUN/deepspeed_config.json. The LR schedule stays plmkit's: a torch LambdaLR on the
engine's AdamW, stepped by the loop like in every other strategy (no "scheduler" section). The engine
does the backward (unscaled by accumulation: the loop already weights each micro-batch by its share of
the step's target tokens), clipping, the optimizer step and the accumulation boundary, which the loop
sets explicitly on the last micro-batch. On CPU, DS_ACCELERATOR=cpu is set and the backend is gloo;
DeepSpeed JIT-compiles a small shared-memory op there on its first launch (~40 s, cached by
torch.utils.cpp_extension under ~/.cache/torch_extensions, or TORCH_EXTENSIONS_DIR).
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import os
import sys
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from plmkit.errors import ConfigError
from plmkit.io import checkpoint_header
from plmkit.train.config import DeepSpeedConfig, OptimConfig, TrainConfig
from plmkit.train.distributed.base import LAYOUT_DEEPSPEED
from plmkit.train.distributed.process_group import ProcessGroupStrategy
from plmkit.train.distributed.world import World
from plmkit.train.optim import parameter_groups
from plmkit.train.precision import resolve_precision
from plmkit.weights import DEEPSPEED_FOLDER  # the engine's checkpoint tag: step-N/deepspeed/

if TYPE_CHECKING:
    from plmkit.train.state import TrainState

CONFIG_NAME = "deepspeed_config.json"
INSTALL = "pip install 'plmkit[deepspeed]'"
# Generated DeepSpeed keys -> the recipe keys they come from (what an error tells the user to set instead)
GENERATED_FROM = {
    "train_micro_batch_size_per_gpu": "train.batch_size",
    "gradient_accumulation_steps": "train.accumulation",
    "train_batch_size": "train.batch_size and train.accumulation (times the number of processes)",
    "gradient_clipping": "train.clip_grad",
    "optimizer": "optim.lr / betas / eps / weight_decay",
    "scheduler": "schedule.* (the LR schedule is plmkit's)",
    "zero_optimization.stage": "distributed.deepspeed.stage",
    "zero_optimization.offload_optimizer": "distributed.deepspeed.offload_optimizer",
    "zero_optimization.offload_param": "distributed.deepspeed.offload_params",
    "bf16.enabled": "train.precision",
    "fp16.enabled": "train.precision",
}


def import_deepspeed(device: torch.device) -> Any:
    """The deepspeed module, set up for this device (the CPU accelerator when there is no GPU)."""
    if device.type == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # read when deepspeed picks its accelerator
    try:
        import deepspeed
    except ImportError as e:
        raise ConfigError(
            f"distributed.strategy=deepspeed needs the deepspeed package ({e}): {INSTALL}"
        ) from None
    ds_logger = logging.getLogger("DeepSpeed")
    ds_logger.setLevel(
        logging.WARNING
    )  # its INFO lines (e.g. fp16 OVERFLOW! per skipped step) would drown ours
    if not any(isinstance(f, OncePerRun) for f in ds_logger.filters):
        ds_logger.addFilter(OncePerRun())
    return deepspeed


# A compile takes ~40 s; a lock older than this was left by a compile that was killed.
STALE_LOCK_SECONDS = 600


def check_no_stale_build_lock(now: float | None = None) -> None:
    """torch's extension builder waits, silently and forever, while a `lock` file is in the op's build
    folder; a compile killed midway (Ctrl-C, a timeout) leaves one behind and every later DeepSpeed launch
    on the CPU hangs. One that old is named with the fix instead."""
    from torch.utils.cpp_extension import get_default_build_root

    custom = os.environ.get("TORCH_EXTENSIONS_DIR")
    locks = (
        Path(custom).glob("deepspeed*/lock")
        if custom
        else Path(get_default_build_root()).glob("*/deepspeed*/lock")
    )
    now = time.time() if now is None else now
    for lock in locks:
        age = now - lock.stat().st_mtime
        if age > STALE_LOCK_SECONDS:
            raise ConfigError(
                f"{lock} is a lock left {age / 60:.0f} minutes ago by a DeepSpeed op compile that was "
                "stopped; torch would wait for it forever: delete it (rm it) when no other run is compiling"
            )


# DeepSpeed warnings that repeat at every step while their cause lasts: the first is shown, not the rest.
PER_STEP_WARNINGS = ("allocator cache flushes since last step",)  # ZeRO-3 under memory pressure


class OncePerRun(logging.Filter):
    """Drops the repeats of DeepSpeed's per-step warnings (PER_STEP_WARNINGS)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        for pattern in PER_STEP_WARNINGS:
            if pattern in message:
                if pattern in self.seen:
                    return False
                self.seen.add(pattern)
        return True


def check_deepspeed_config(
    ds: DeepSpeedConfig, train: TrainConfig, optim: OptimConfig, device: torch.device
) -> None:
    if ds.stage not in (1, 2, 3):
        raise ConfigError(
            f"distributed.deepspeed.stage={ds.stage!r}: ZeRO stages are 1 (optimizer state sharded), 2 (+ gradients) "
            "and 3 (+ parameters)"
        )
    if ds.offload_params and ds.stage != 3:
        raise ConfigError(
            f"distributed.deepspeed.offload_params needs ZeRO stage 3 (parameters are only partitioned there), "
            f"but stage={ds.stage}; set distributed.deepspeed.stage=3 or offload_params=false"
        )
    if train.compile:
        raise ConfigError(
            "train.compile=true with distributed.strategy=deepspeed: the engine wraps the model itself; "
            "set train.compile=false (or use strategy ddp / fsdp)"
        )
    deepspeed_config(
        train, optim, ds, 1, resolve_precision(train.precision, device), device.type
    )  # options clash?
    import_deepspeed(device)


def deepspeed_config(
    t: TrainConfig, o: OptimConfig, ds: DeepSpeedConfig, world_size: int, precision: str, device_type: str
) -> dict[str, Any]:
    """The DeepSpeed JSON of the train, optim and deepspeed sections (`precision`: the resolved fp32 / bf16 /
    fp16)."""
    pin = device_type == "cuda"  # pinned host memory speeds up CPU <-> GPU copies; there are none on CPU
    zero: dict[str, Any] = {"stage": ds.stage}
    if ds.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": pin}
    if ds.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": pin}
    generated: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": t.batch_size,
        "gradient_accumulation_steps": t.accumulation,
        "train_batch_size": t.batch_size * t.accumulation * world_size,
        "gradient_clipping": float(t.clip_grad or 0.0),
        "optimizer": {
            "type": "AdamW",
            "params": {
                "lr": o.lr,
                "betas": list(o.betas),
                "eps": o.eps,
                "weight_decay": o.weight_decay,  # the default; plmkit's no-decay group overrides it with 0
                "torch_adam": device_type != "cuda",  # DeepSpeed's fused Adam kernels are CUDA only
            },
        },
        "zero_optimization": zero,
        "bf16": {"enabled": precision == "bf16"},  # bf16 weights in the engine, fp32 master copy in ZeRO
        "fp16": {"enabled": precision == "fp16"},
        "steps_per_print": 2**31 - 1,  # plmkit logs the progress
        "wall_clock_breakdown": False,
    }
    if precision == "fp16":  # dynamic loss scaling from 2^16, as torch's GradScaler
        generated["fp16"].update({"loss_scale": 0, "initial_scale_power": 16})
    merge_options(generated, ds.options, "distributed.deepspeed.options", "")
    return generated


def merge_options(base: dict[str, Any], extra: dict[str, Any], where: str, prefix: str) -> None:
    """Add the user's extra DeepSpeed keys to the generated config, refusing any generated one."""
    for key, value in extra.items():
        dotted = f"{prefix}{key}"
        if dotted in GENERATED_FROM or (key in base and not isinstance(base[key], dict)):
            source = GENERATED_FROM.get(dotted, "the recipe")
            raise ConfigError(
                f"{where}.{dotted} is generated from {source}; set that instead of a DeepSpeed key"
            )
        if key in base and isinstance(value, dict):
            merge_options(base[key], value, where, f"{dotted}.")
        elif key in base:
            raise ConfigError(f"{where}.{dotted} must be a mapping (DeepSpeed's {key!r} section)")
        else:
            base[key] = copy.deepcopy(value)


def check_same_world(checkpoint: Path, info: dict[str, Any], world_size: int) -> None:
    written = info.get("distributed", {}).get("world_size")
    if written != world_size:
        raise ConfigError(
            f"cannot resume {checkpoint} on {world_size} process(es): its ZeRO optimizer state is partitioned over "
            f"{written}; resume with --nproc {written}, or convert it with `plm convert --from-sharded {checkpoint} "
            "--out DIR` and start a new run with init_from=DIR"
        )


class DeepSpeedStrategy(ProcessGroupStrategy):
    name = "deepspeed"
    layout = LAYOUT_DEEPSPEED
    exposes_gradients = False  # the engine holds the (reduced, partitioned) gradients

    def describe(self) -> str:
        ds = self.ds_config["zero_optimization"]
        offload = [k.removeprefix("offload_") for k in ("offload_optimizer", "offload_param") if k in ds]
        return (
            super().describe()
            + f"; ZeRO-{ds['stage']}"
            + (f", {' + '.join(offload)} offloaded to the CPU" if offload else "")
            + f"; DeepSpeed config: {self.config_path}"
        )

    def start(self) -> None:
        deepspeed = import_deepspeed(self.device)
        super().start()  # the torch process group; DeepSpeed's communication layer adopts it
        if "LOCAL_RANK" not in os.environ:  # a group of one without torchrun: the engine insists on it
            os.environ["LOCAL_RANK"] = "0"
            self._set_local_rank = True
        if self.device.type == "cpu":
            check_no_stale_build_lock()
        if self.device.type == "cpu" and self.is_main:
            print(
                "deepspeed: loading its CPU communication op (compiled once, ~40 s on the first launch)",
                file=sys.stderr,
                flush=True,
            )
        # its "op built successfully" line: rank 0's to stderr (stdout stays the run's output), the others' dropped
        with contextlib.redirect_stdout(sys.stderr if self.is_main else io.StringIO()):
            deepspeed.init_distributed(dist_backend=self.backend, dist_init_required=False, verbose=False)
        # DeepSpeed's ZeRO still calls all_gather_into_tensor, which torch deprecates: not the user's concern
        warnings.filterwarnings(
            "ignore", message=".*all_gather_into_tensor` is deprecated", category=FutureWarning
        )

    def close(self) -> None:
        super().close()
        if getattr(self, "_set_local_rank", False):
            os.environ.pop("LOCAL_RANK", None)
            self._set_local_rank = False

    def __init__(
        self,
        world: World,
        device: torch.device,
        ds_config: dict[str, Any],
        optim: OptimConfig,
        config_dir: Path,
    ) -> None:
        super().__init__(world, device)
        self.ds_config = ds_config  # deepspeed_config(...)
        self.optim = optim  # the engine's AdamW gets plmkit's parameter groups
        self.config_path = config_dir / CONFIG_NAME

    def uses_grad_scaler(self) -> bool:
        return False  # the engine scales fp16 losses itself

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        deepspeed = import_deepspeed(self.device)
        self.header = checkpoint_header(model)
        if self.is_main:
            self.config_path.parent.mkdir(parents=True, exist_ok=True)
            self.config_path.write_text(json.dumps(self.ds_config, indent=2) + "\n", encoding="utf-8")
        groups = parameter_groups(model, self.optim.weight_decay, self.optim.decay_embeddings)
        engine, _, _, _ = deepspeed.initialize(
            model=model,
            model_parameters=groups,
            config=copy.deepcopy(self.ds_config),
            dist_init_required=False,
        )
        self.engine = engine
        self.pending = False  # gradients accumulated in the engine since its last step
        return engine

    def make_optimizer(self, model: torch.nn.Module, optim: OptimConfig) -> torch.optim.Optimizer:
        return self.engine.basic_optimizer  # the LambdaLR drives the torch AdamW inside the engine

    def accumulating(self, model: torch.nn.Module, last: bool):
        self.engine.set_gradient_accumulation_boundary(last)
        return super().accumulating(model, last)

    def backward(self, loss: torch.Tensor, scaler: torch.amp.GradScaler, finite: bool) -> bool:
        # The engine cannot drop gradients it has reduced, so the ranks agree on finiteness *before*
        # each backward: a non-finite loss anywhere stops the step on every rank.
        (bad,) = self.sum_over_ranks(0.0 if finite else 1.0)
        if bad:
            return False
        self.engine.backward(loss, scale_wrt_gas=False)  # the loss is already weighted by its token share
        self.pending = True
        return True

    def clip_grad_norm(self, model: torch.nn.Module, max_norm: float) -> None:
        """The engine clips in its step (gradient_clipping, from train.clip_grad)."""

    def step(self, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> None:
        self.engine.step()  # clips, steps the AdamW, clears the gradients (skips fp16 overflows itself)
        self.pending = False

    def zero_grad(self, optimizer: torch.optim.Optimizer, stepped: bool) -> None:
        if not stepped and self.pending:
            from plmkit.train.errors import TrainingError

            raise TrainingError(
                "a loss turned non-finite after DeepSpeed had already reduced the gradients of earlier "
                "micro-batches of the step, which it cannot drop; lower optim.lr, use train.precision=fp32 "
                "or train.accumulation=1 (then such a step is skipped)"
            )

    def checkpoint_info(self) -> dict[str, Any]:
        return {**super().checkpoint_info(), "zero_stage": self.ds_config["zero_optimization"]["stage"]}

    def save(
        self,
        run_dir: Path,
        step: int,
        state: TrainState,
        tokenizer: Any,
        info: dict[str, Any],
        keep_last: int,
    ) -> Path:
        return self.save_sharded(
            run_dir,
            step,
            state,
            tokenizer,
            info,
            keep_last,
            self.header,
            lambda folder: self.engine.save_checkpoint(str(folder), tag=DEEPSPEED_FOLDER, save_latest=False),
        )

    def load(self, checkpoint: Path, state: TrainState, saved: dict[str, Any], info: dict[str, Any]) -> None:
        self.check_layout(checkpoint, info, (LAYOUT_DEEPSPEED,))
        self.check_one_model(state)
        check_same_world(checkpoint, info, self.world_size)
        loaded, _ = self.engine.load_checkpoint(
            str(checkpoint), tag=DEEPSPEED_FOLDER, load_optimizer_states=True, load_lr_scheduler_states=False
        )
        if loaded is None:
            from plmkit.errors import CheckpointError

            raise CheckpointError(
                f"{checkpoint / DEEPSPEED_FOLDER} holds no DeepSpeed checkpoint the engine can load"
            )
        self.restore(state, saved)
