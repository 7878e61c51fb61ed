"""Per-rank bodies of the pipeline-parallel tests (tests/train/test_pipeline_parallel.py), run by
`fork_ranks(fn, world_size, tmp, ...)` (gloo, CPU, one thread each).

`engine_cases`: each rank trains a tiny 4-block model through the engine's train_step with a
PipelineStrategy (pipeline alone, x FSDP2 data parallel, x tensor parallel) and rank 0 writes the per-step
losses to tmp/<case>.json; the test compares them with `train(model, Strategy(), ...)` in one process.
`recipe_run`: the pre-training recipe itself (`pretrain(config)`, as each torchrun worker runs it) on this
process group."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import torch
import torch.multiprocessing as mp

import tp_workers
from tp_workers import GPT2_LIKE, LLAMA_LIKE, VOCAB

LAYERS = 4
MICRO_BATCHES = 4
ROWS, LENGTH = 4, 12  # a global micro-batch
LLAMA = dict(LLAMA_LIKE, tie_embeddings=False, n_layer=LAYERS)
GPT2 = dict(GPT2_LIKE, tie_embeddings=False, n_layer=LAYERS)


def fork_ranks(fn, world_size: int, tmp: Path, *args) -> None:
    """tp_workers.spawn with forked ranks: they inherit this process's imports (torch, plmkit, the
    pipelining package), which spawned ranks would each import again (10 s and more on a busy 2-core
    machine). This process runs torch on one thread (conftest.py), so no thread pool is forked."""
    import plmkit.recipes.pretrain  # noqa: F401  (what the ranks use, imported once, here)
    import plmkit.train.distributed.pipeline  # noqa: F401

    mp.start_processes(
        tp_workers._entry,
        args=(fn, world_size, str(tmp), args),
        nprocs=world_size,
        join=True,
        start_method="fork",
    )


def micro_batches(step: int) -> list[dict[str, torch.Tensor]]:
    """The step's global micro-batches: causal-LM rows, one right padded (its padding carries no loss)."""
    g = torch.Generator().manual_seed(100 + step)
    out = []
    for _ in range(MICRO_BATCHES):
        ids = torch.randint(3, VOCAB, (ROWS, LENGTH), generator=g)
        mask = torch.ones_like(ids)
        mask[1, 8:] = 0
        out.append({"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)})
    return out


def tiny(arch: dict) -> torch.nn.Module:
    from plmkit.model import ModelConfig, build_model

    torch.manual_seed(0)
    return build_model(ModelConfig(family="causal", **arch)).train()


def train(arch: dict, strategy, steps: int, clip: float | None, checkpointing: bool = False) -> list[float]:
    """`steps` optimizer steps of the engine on the strategy's view of a tiny model. SGD, not AdamW: AdamW
    (and a clip that bites) would hide a gradient that is wrong by a uniform factor."""
    from plmkit.recipes.pretrain import PretrainLoss
    from plmkit.train.loop import train_step
    from plmkit.train.precision import Precision

    model = tiny(arch)
    model.set_gradient_checkpointing(checkpointing)
    model = strategy.wrap(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.5)
    precision = Precision("fp32", torch.device("cpu"))
    loss = PretrainLoss(model)
    return [
        train_step(
            {"model": model}, {"model": optimizer}, {}, loss, micro_batches(s), strategy, precision, clip
        )
        for s in range(steps)
    ]


def engine_cases(rank: int, world: int, tmp: Path, cases: list, steps: int) -> None:
    """cases: (name, arch, pipeline_parallel, tensor_parallel, schedule, clip, gradient checkpointing);
    data parallel: the rest of the ranks."""
    from plmkit.train.distributed.pipeline import PipelineStrategy
    from plmkit.train.distributed.world import World

    for name, arch, pp, tp, schedule, clip, checkpointing in cases:
        strategy = PipelineStrategy(World(rank, world, rank, True), torch.device("cpu"), pp, schedule, tp)
        losses = train(arch, strategy, steps, clip, checkpointing)
        if rank == 0:
            (tmp / f"{name}.json").write_text(json.dumps(losses), encoding="utf-8")


def recipe_run(rank: int, world: int, tmp: Path, recipe: str, overrides: list[str]) -> None:
    """`plm pretrain RECIPE OVERRIDES` as a torchrun worker runs it, on the spawned process group; rank 0
    writes its result (and the description it printed) to tmp/recipe-run.json."""
    from plmkit.config import load_config
    from plmkit.recipes.config import RecipeConfig
    from plmkit.recipes.pretrain import pretrain

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    stream = io.StringIO()
    result = pretrain(load_config(RecipeConfig, Path(recipe), overrides), stream=stream)
    if rank == 0:
        result["printed"] = stream.getvalue()
        (tmp / "recipe-run.json").write_text(json.dumps(result), encoding="utf-8")


def two_ranks(
    rank: int, world: int, tmp: Path, cases: list, steps: int, recipe: str, overrides: list
) -> None:
    engine_cases(rank, world, tmp, cases, steps)
    recipe_run(rank, world, tmp, recipe, overrides)
