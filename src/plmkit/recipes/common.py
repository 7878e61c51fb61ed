"""Recipe setup: turn a RecipeConfig into the parts the loop uses (a `Run`), and restore a checkpoint.

Small builder functions, one per part, so a reader can see where each piece comes from:
tokenizer -> model -> objective -> data -> optimizer / schedule -> precision.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from plmkit.data import PretrainingData, build_pretraining_data
from plmkit.data.objectives import build_objective, objective_class
from plmkit.data.objectives.base import Objective
from plmkit.errors import CheckpointError, ConfigError
from plmkit.model import ModelConfig, get_preset
from plmkit.model.expert_parallel import share_routing
from plmkit.model.registry import model_class_name
from plmkit.peft import apply_spec, get_config, trainable_report
from plmkit.recipes.config import RecipeConfig
from plmkit.recipes.inputs import build_tokenizer, check_init_from, load_init_from
from plmkit.train.checkpoint import load_training_state
from plmkit.train.distributed.base import Strategy
from plmkit.train.distributed.build import build_strategy, strategy_name
from plmkit.train.distributed.world import World
from plmkit.train.optim import build_scheduler
from plmkit.train.precision import Precision, resolve_precision
from plmkit.train.state import TrainState
from plmkit.weights import unwrap

MODEL = "model"  # the recipe's one model in the training state


@dataclass
class ModelRng:
    """A model's own random stream (ELECTRA's replacement sampler) as a checkpointed state."""

    model: torch.nn.Module

    def state_dict(self) -> dict[str, Any]:
        return self.model.rng_state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_rng_state_dict(state)


@dataclass
class Run:
    config: RecipeConfig
    run_dir: Path
    device: torch.device
    precision: Precision
    tokenizer: Any
    model: torch.nn.Module
    objective: Objective
    eval_objective: Objective
    train_data: PretrainingData
    val_batches: Callable[[int], Iterator[list[torch.Tensor]]] | None
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    strategy: Strategy = field(default_factory=Strategy)  # one process, or DDP / FSDP / DeepSpeed

    def train_state(self) -> TrainState:
        """The parts of the run that a checkpoint holds."""
        stateful: dict[str, Any] = {
            "scaler": self.precision.scaler,
            "data": self.train_data,
            "objective": self.objective,
        }
        model = unwrap(self.model)
        if hasattr(model, "rng_state_dict"):  # e.g. ELECTRA's replacement sampler
            stateful["model_rng"] = ModelRng(model)
        return TrainState({MODEL: self.model}, {MODEL: self.optimizer}, {MODEL: self.scheduler}, stateful)

    def describe(self) -> str:
        c = self.config
        model = unwrap(self.model)
        n_params = self.strategy.parameter_count(model)  # the whole model's, however it is split
        mc = getattr(model, "config", None)
        name = model_class_name(model)
        arch = f"{name} ({mc.family}, {mc.n_layer}x{mc.d_model})" if mc else name
        if getattr(mc, "n_experts", None) is not None:  # a mixture of experts
            arch += f", {mc.n_experts} experts, top-{mc.top_k}"
            if c.distributed.expert_parallel > 1:
                arch += f", expert parallel over {c.distributed.expert_parallel} ranks"
        peft = get_config(model)
        tuned = ""
        if peft:  # the recipe's options (or, for an init_from PEFT checkpoint, its recorded ones)
            options = ", ".join(f"{k}={v}" for k, v in (c.peft or peft.options).items() if k != "method")
            base = f" on a frozen {c.quantize.mode} base" if c.quantize.mode else ""
            tuned = f"peft: {peft.method} ({options}){base}; {trainable_report(model)}\n"
        shares, tp = self.strategy.data_parallel_size, self.strategy.tensor_parallel
        pp = self.strategy.pipeline_parallel
        if pp > 1:  # the ranks of one model replica train on the same rows
            ranks = f"{pp} pipeline stages" + (f" x {tp} tensor-parallel ranks" if tp > 1 else "")
            batch = f" x {shares} data-parallel group(s) of {ranks}"
        elif tp > 1:
            batch = f" x {shares} data-parallel group(s) of {tp} tensor-parallel ranks"
        else:
            batch = f" x {shares} processes" if shares > 1 else ""
        distributed = self.strategy.describe()
        return (
            f"run {c.name} -> {self.run_dir}\n"
            f"model: {arch}, {n_params:,} parameters; tokenizer: {self.tokenizer.vocab_size:,} tokens\n"
            f"{tuned}"
            f"objective: {c.objective.name}; data: {self.train_data.describe()}\n"
            f"train: {c.train.steps} steps x {c.train.accumulation} x {c.train.batch_size} x {c.data.block_size} "
            f"tokens{batch} on {self.device} in {self.precision.name}; optim lr {c.optim.lr} ({c.schedule.kind} schedule)"
            + (f"\n{distributed}" if distributed else "")
        )


# ---- model -----------------------------------------------------------------------------------------
def build_model_config(config: RecipeConfig, tokenizer: Any) -> ModelConfig:
    fields = config.model.overrides()
    base = get_preset(config.model.preset) if config.model.preset else ModelConfig()
    vocab = fields.get("vocab_size", tokenizer.vocab_size)
    if vocab != tokenizer.vocab_size:
        raise ConfigError(
            f"model.vocab_size={vocab} but the tokenizer has {tokenizer.vocab_size:,} tokens; "
            "remove model.vocab_size (it defaults to the tokenizer's) or use a matching tokenizer"
        )
    fields["vocab_size"] = vocab
    for role in ("pad", "bos", "eos"):
        fields.setdefault(f"{role}_token_id", getattr(tokenizer, f"{role}_id"))
    if fields.get("family", base.family) == "seq2seq":
        # BART starts decoding from </s> (its labels begin with <s>); T5, which has no bos, from <pad>
        start = tokenizer.eos_id if tokenizer.bos_id is not None else tokenizer.pad_id
        fields.setdefault("decoder_start_token_id", start)
    fields.setdefault("max_positions", max(base.max_positions, config.data.block_size + 8))
    return base.replace(**fields)


def recipe_architecture(config: RecipeConfig) -> ModelConfig | None:
    """The model's architecture before any tokenizer exists (its vocabulary size and special ids are still
    the preset's), for checks that must run before the processes wait on each other: the recipe's model
    section, or an init_from plmkit checkpoint's header (None for a Hugging Face folder)."""
    if config.init_from:
        from plmkit.io import CONFIG_FILE, read_header

        check_init_from(config)
        header = Path(config.init_from) / CONFIG_FILE
        return ModelConfig.from_dict(read_header(header)["model"]) if header.is_file() else None
    base = get_preset(config.model.preset) if config.model.preset else ModelConfig()
    return base.replace(**config.model.overrides())


def build_recipe_model(config: RecipeConfig, tokenizer: Any) -> torch.nn.Module:
    if config.init_from:  # continual pre-training: a plmkit or Hugging Face checkpoint
        model = load_init_from(config, lm_head=True)  # a bare encoder gets a new head, with a warning
        if model.config.vocab_size != tokenizer.vocab_size:
            raise ConfigError(
                f"init_from {config.init_from} has vocab_size {model.config.vocab_size} but the tokenizer has "
                f"{tokenizer.vocab_size}; use the checkpoint's own tokenizer (leave tokenizer.path empty)"
            )
        return model
    objective = objective_class(config.objective.name)  # it declares the model it trains
    return objective.build_model(
        build_model_config(config, tokenizer), **config.objective.options.get("model", {})
    )


def check_family(config: RecipeConfig, model: torch.nn.Module) -> None:
    """The built (or loaded) model is of the family the objective trains."""
    check_objective_family(config.objective.name, getattr(getattr(model, "config", None), "family", None))


def check_objective_family(objective: str, family: str | None) -> None:
    wanted = objective_class(objective).family  # each objective declares the family it trains
    if wanted and family and wanted != family:
        raise ConfigError(
            f"objective {objective!r} trains {wanted} models but model.family={family!r}; "
            f"set model.family={wanted} or choose another objective"
        )


def fp32_master_weights(model: torch.nn.Module) -> torch.nn.Module:
    """The model with fp32 parameters and buffers. Every precision trains fp32 master weights: fp32 as is,
    bf16 / fp16 under autocast (and FSDP's mixed-precision policy gathers them in the low dtype), so a
    checkpoint saved in bf16 or fp16 is cast up when it starts a run (init_from)."""
    low = [
        t
        for t in (*model.parameters(), *model.buffers())
        if t.is_floating_point() and t.dtype != torch.float32
    ]
    return model.float() if low else model


def quantize_base(config: RecipeConfig, model: torch.nn.Module) -> torch.nn.Module:
    """QLoRA: quantize the frozen base before the PEFT method goes on top (recipe section `quantize`)."""
    q = config.quantize
    if q.mode is None:
        return model
    if not config.peft:
        raise ConfigError(
            f"quantize.mode={q.mode} freezes the base in integers, so there is nothing left to train; add a peft "
            "section (e.g. peft={method: lora, r: 8, target: all-linear}: QLoRA) or remove quantize"
        )
    from plmkit.quant import quantize

    return quantize(model, q.mode, embeddings=q.embeddings, backend=q.backend)


# ---- data ------------------------------------------------------------------------------------------
def build_recipe_data(config: RecipeConfig, tokenizer: Any, batch_size: int | None = None) -> PretrainingData:
    """The recipe's training stream (sources mixed by weight) and validation blocks (data.validation, or
    held-out blocks). `batch_size`: blocks per batch (default train.batch_size; several processes draw
    all data-parallel ranks' rows)."""
    d = config.data
    if not d.sources:
        raise ConfigError("the recipe has no data.sources; add e.g. data.sources=[{path: corpus.txt}]")
    return build_pretraining_data(
        d.sources,
        tokenizer,
        d.block_size,
        batch_size or config.train.batch_size,
        seed=config.seed,
        cache_dir=d.cache_dir,
        validation=d.validation or (),
        validation_fraction=d.validation_fraction,
    )


# ---- the strategy ----------------------------------------------------------------------------------
def recipe_strategy_name(config: RecipeConfig, world: World) -> str:
    """The recipe's strategy for `world` (plmkit.train.distributed.build.strategy_name), and its tensor
    parallelism checked against the recipe's objective, PEFT and model (before any process waits)."""
    name = strategy_name(config.distributed, world)
    check_expert_parallel(config)
    tp = config.distributed.tensor_parallel
    if tp == 1:
        return name
    key = f"distributed.tensor_parallel={tp}"
    if config.objective.name == "electra":
        raise ConfigError(
            f"{key} with objective electra: its generator and discriminator form one model of two "
            "stacks, which tensor parallelism does not split; use distributed.tensor_parallel=1 (FSDP alone)"
        )
    if config.peft:
        raise ConfigError(
            f"{key} with peft.method={config.peft.get('method')!r}: tensor parallelism splits plain "
            "projections only; use distributed.tensor_parallel=1 (FSDP alone) for PEFT"
        )
    architecture = recipe_architecture(config)
    if (
        architecture is not None
    ):  # else (a Hugging Face init_from) apply_tensor_parallel checks it on every rank
        from plmkit.train.distributed.tensor_parallel import check_tensor_parallel

        try:
            check_tensor_parallel(architecture, tp)
        except ConfigError as e:
            raise ConfigError(f"{key}: {e}") from None
    return name


def check_expert_parallel(config: RecipeConfig) -> None:
    """distributed.expert_parallel against the recipe's model: experts to split, evenly."""
    ep = config.distributed.expert_parallel
    architecture = recipe_architecture(config) if ep > 1 else None
    if architecture is None:  # (a Hugging Face init_from is checked when share_routing runs)
        return
    key = f"distributed.expert_parallel={ep}"
    if architecture.n_experts is None:
        raise ConfigError(f"{key}, but the model has no experts (model.n_experts=null); set model.n_experts")
    if architecture.n_experts % ep:
        raise ConfigError(
            f"{key} does not divide model.n_experts={architecture.n_experts}: each rank computes "
            f"n_experts / {ep} experts; choose a divisor of {architecture.n_experts}"
        )


def build_recipe_strategy(config: RecipeConfig) -> Strategy:
    """The recipe's strategy, its process group started (the caller closes it)."""
    recipe_strategy_name(config, World.from_env())  # the recipe's checks, before any process waits
    return build_strategy(config.distributed, config.train, config.optim, Path(config.run_dir))


# ---- the run ---------------------------------------------------------------------------------------
def build_run(config: RecipeConfig, strategy: Strategy | None = None, resume_from: Path | None = None) -> Run:
    """The run's parts; `strategy` (default: the recipe's, started here) is closed by the caller. With
    `resume_from`, the model is checked against that checkpoint before anything is written (the run folder
    and recipe.json are plmkit.recipes.runs' business)."""
    strategy = strategy or build_recipe_strategy(config)
    torch.manual_seed(config.seed)
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    run_dir = Path(config.run_dir)
    device = strategy.device
    precision = Precision(resolve_precision(config.train.precision, device), device)
    if not strategy.uses_grad_scaler():  # DeepSpeed scales fp16 losses in its engine
        precision.scaler = torch.amp.GradScaler(device.type, enabled=False)

    with strategy.main_first():  # rank 0 trains and saves a new tokenizer; the other ranks then load it
        tokenizer = build_tokenizer(config, run_dir, resume_from)
    model = build_recipe_model(config, tokenizer)  # the same initial weights on every rank (same seed)
    model = fp32_master_weights(model)  # a bf16 init_from checkpoint trains in train.precision, not bf16
    check_family(config, model)
    model = quantize_base(config, model)
    model = apply_spec(model, config.peft, tokenizer)  # PEFT: base frozen; the optimizer skips it
    if resume_from is not None:  # before the strategy (DeepSpeed writes its config) or anything else
        check_resumable(model, resume_from)
    model.to(device)
    if config.train.gradient_checkpointing and hasattr(model, "set_gradient_checkpointing"):
        model.set_gradient_checkpointing(True)
    options = {k: v for k, v in config.objective.options.items() if k != "model"}
    objective = build_objective(config.objective.name, tokenizer, seed=config.seed, **options)
    eval_objective = build_objective(config.objective.name, tokenizer, seed=config.seed + 1, **options)
    with strategy.main_first():  # rank 0 builds the token-store cache, the others find it
        # every rank draws the global micro-batch (all data-parallel ranks' rows) and keeps its share:
        # see train/distributed/
        global_batch = config.train.batch_size * strategy.data_parallel_size
        train_data = build_recipe_data(config, tokenizer, global_batch)
    val_batches = train_data.validation_batches if train_data.validation else None
    # a mixture of experts on several ranks: router losses of the whole micro-batch, experts split
    share_routing(model, config.distributed.expert_parallel)
    model = strategy.wrap(model)  # DDP / FSDP-sharded / the DeepSpeed engine
    optimizer = strategy.make_optimizer(model, config.optim)  # on the (sharded) parameters
    strategy.seed_rank(config.seed)  # dropout differs between data-parallel ranks
    scheduler = build_scheduler(optimizer, config.train.steps, config.schedule)
    if config.train.compile:
        model = torch.compile(model)
    return Run(
        config,
        run_dir,
        device,
        precision,
        tokenizer,
        model,
        objective,
        eval_objective,
        train_data,
        val_batches,
        optimizer,
        scheduler,
        strategy,
    )


def check_resumable(model: torch.nn.Module, checkpoint: Path) -> None:
    """The checkpoint holds a model of this class and architecture (CheckpointError otherwise)."""
    from plmkit.io import read_header

    if not checkpoint.is_dir():
        raise CheckpointError(f"resume checkpoint {checkpoint} does not exist")
    header = read_header(checkpoint / "plmkit.json")
    model = unwrap(model)
    ours = model.config.to_dict() if hasattr(model, "config") else {}
    theirs = header.get("model", {})
    if hasattr(model, "config") and theirs:
        # read as a load reads it: keys a checkpoint of an older plmkit lacks take their defaults
        with contextlib.suppress(ConfigError):
            theirs = type(model.config).from_dict(theirs).to_dict()
    differing = [k for k in ours if k != "extra" and theirs.get(k) != ours[k]]
    if header.get("model_class") != model_class_name(model) or differing:
        raise CheckpointError(
            f"cannot resume from {checkpoint}: it holds a {header.get('model_class')} with a different architecture "
            f"({', '.join(f'{k}={theirs.get(k)!r} vs {ours[k]!r}' for k in differing[:3]) or 'another class'}); "
            "resume with the recipe that wrote it, or start a new run (name=NAME or out_dir=DIR)"
        )


def restore_run(run: Run, checkpoint: Path) -> tuple[int, int, int]:
    """Load a training checkpoint into the run; returns (step, tokens, skipped steps)."""
    check_resumable(run.model, checkpoint)
    saved, info = load_training_state(checkpoint)
    run.strategy.load(
        checkpoint, run.train_state(), saved, info
    )  # models, optimizers (whole or sharded), the rest, RNG
    return int(info["step"]), int(info.get("tokens", 0)), int(info.get("skipped_steps", 0))
