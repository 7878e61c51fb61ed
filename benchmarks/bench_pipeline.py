"""The pipeline bubble, measured: GPipe vs 1F1B on 2 stages with 4 and 8 micro-batches, against the
theoretical idle fraction (P - 1) / (M + P - 1).

    python benchmarks/bench_pipeline.py [--micro-batches 4 8] [--steps 6] [--d-model 256] [--layers 4]
                                        [--rows 4] [--length 128] [--out benchmarks/results]

Each configuration is 2 forked CPU ranks (gloo, one thread each) training a causal LM through plmkit's
engine with `PipelineStrategy` (plmkit.train.distributed.pipeline). On every measured step, each rank
times the schedule's step (after a barrier, so both start together) and the time its stage spends
computing (PipelineStage.forward_one_chunk and backward_one_chunk, the loss included); its bubble is
1 - compute / step. The row reports the median over steps of the mean over the ranks, each rank's, and the
most micro-batches whose activations a stage held at once (GPipe: M; 1F1B: P - stage): 1F1B's point is
that memory, not the bubble, which the two schedules share in theory.

The measured bubble also holds the point-to-point transfers and the Python of the schedule, and on a
machine shared with other jobs the time a rank waits for a core: the machine's load average is recorded.
Prints one JSON line per configuration and a summary line; writes <out>/pipeline-<cpu>-<date>.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchkit import limits, report  # noqa: E402

STAGES = 2
VOCAB = 512


def theoretical_bubble(stages: int, micro_batches: int) -> float:
    """The idle fraction of each stage with equal stage times: (P - 1) / (M + P - 1)."""
    return (stages - 1) / (micro_batches + stages - 1)


def _rank(rank: int, world: int, tmp: str, schedule: str, micro_batches: int, args: dict) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/rendezvous", rank=rank, world_size=world)
    try:
        result = _measure(rank, world, schedule, micro_batches, args)
        results: list = [None] * world
        dist.all_gather_object(results, result)
        if rank == 0:
            Path(tmp, "result.json").write_text(json.dumps(results), encoding="utf-8")
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _measure(rank: int, world: int, schedule: str, micro_batches: int, args: dict) -> dict:
    from plmkit.model import ModelConfig, build_model
    from plmkit.recipes.pretrain import PretrainLoss
    from plmkit.train.config import OptimConfig
    from plmkit.train.distributed.pipeline import PipelineStrategy
    from plmkit.train.distributed.world import World
    from plmkit.train.loop import train_step
    from plmkit.train.precision import Precision

    torch.manual_seed(0)
    config = ModelConfig(
        family="causal",
        vocab_size=VOCAB,
        d_model=args["d_model"],
        n_layer=args["layers"],
        n_head=4,
        d_ff=4 * args["d_model"],
        max_positions=args["length"],
        tie_embeddings=False,
    )
    strategy = PipelineStrategy(World(rank, world, rank, True), torch.device("cpu"), STAGES, schedule)
    model = strategy.wrap(build_model(config).train())
    optimizer = strategy.make_optimizer(model, OptimConfig(lr=1e-4))
    precision = Precision("fp32", torch.device("cpu"))
    loss = PretrainLoss(model)
    g = torch.Generator().manual_seed(1)

    def batches() -> list[dict[str, torch.Tensor]]:
        ids = [
            torch.randint(0, VOCAB, (args["rows"], args["length"]), generator=g) for _ in range(micro_batches)
        ]
        return [{"input_ids": x, "labels": x} for x in ids]

    def step() -> None:
        train_step({"model": model}, {"model": optimizer}, {}, loss, batches(), strategy, precision, 1.0)

    step()  # builds the schedule (its shape inference) and warms up
    stage = strategy._schedule._stage
    clock = {"compute": 0.0, "held": 0}
    for name in ("forward_one_chunk", "backward_one_chunk"):
        original = getattr(stage, name)

        def timed(*a, _original=original, **kw):
            start = time.perf_counter()
            out = _original(*a, **kw)
            clock["compute"] += time.perf_counter() - start
            clock["held"] = max(clock["held"], len(stage.fwd_cache))  # micro-batches whose activations live
            return out

        setattr(stage, name, timed)
    schedule_step = strategy._schedule.step

    def timed_step(*a, **kw):
        dist.barrier()  # both ranks start the step together
        clock["compute"], start = 0.0, time.perf_counter()
        out = schedule_step(*a, **kw)
        clock["wall"] = time.perf_counter() - start
        return out

    strategy._schedule.step = timed_step
    step()  # a second warm-up, instrumented
    bubbles, walls = [], []
    for _ in range(args["steps"]):
        step()
        bubbles.append(1 - clock["compute"] / clock["wall"])
        walls.append(clock["wall"])
    return {"stage": strategy.stage, "bubbles": bubbles, "walls": walls, "held": clock["held"]}


def run_configuration(schedule: str, micro_batches: int, args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        mp.start_processes(
            _rank,
            args=(STAGES, tmp, schedule, micro_batches, vars(args)),
            nprocs=STAGES,
            join=True,
            start_method="fork",
        )
        ranks = json.loads(Path(tmp, "result.json").read_text(encoding="utf-8"))
    per_step = [statistics.mean(r["bubbles"][i] for r in ranks) for i in range(args.steps)]
    return {
        "schedule": schedule,
        "stages": STAGES,
        "micro_batches": micro_batches,
        "bubble": statistics.median(per_step),
        "bubble_theoretical": theoretical_bubble(STAGES, micro_batches),
        "bubble_per_stage": [statistics.median(r["bubbles"]) for r in ranks],
        "step_s": statistics.median(statistics.mean(r["walls"][i] for r in ranks) for i in range(args.steps)),
        "micro_batches_held_per_stage": [r["held"] for r in ranks],
        "steps": args.steps,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--micro-batches", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--schedules", nargs="+", default=["gpipe", "1f1b"])
    parser.add_argument("--steps", type=int, default=6, help="measured steps per configuration")
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--rows", type=int, default=4, help="rows per micro-batch")
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import plmkit.recipes.pretrain  # noqa: F401  (imported once here; the forked ranks inherit it)
    import plmkit.train.distributed.pipeline  # noqa: F401

    machine = limits.machine()
    rows = []
    for micro_batches in args.micro_batches:
        for schedule in args.schedules:
            row = run_configuration(schedule, micro_batches, args)
            print(json.dumps(row), flush=True)
            rows.append(row)
    result = {
        "benchmark": "pipeline bubble",
        "machine": {**machine, "load_average_after": list(os.getloadavg())},
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "rows": rows,
    }
    print(
        json.dumps(
            {
                "summary": [
                    {
                        k: r[k]
                        for k in (
                            "schedule",
                            "micro_batches",
                            "bubble",
                            "bubble_theoretical",
                            "micro_batches_held_per_stage",
                        )
                    }
                    for r in rows
                ]
            }
        )
    )
    args.out.mkdir(parents=True, exist_ok=True)
    started_on = datetime.date.fromisoformat(machine["date"][:10])
    stem = report.output_stem(args.out, "pipeline-" + limits.slug(machine["cpu"]["model"]), started_on)
    report.write_text(stem.with_suffix(".json"), json.dumps(result, indent=1) + "\n")
    print(f"wrote {stem.with_suffix('.json')}", file=sys.stderr)
    return result


if __name__ == "__main__":
    main()
