"""The Switch Transformer's claim at this scale: a mixture of experts beats the dense model of the same
active parameters (the same compute per token) on validation loss, for the same data, steps and tokens.

    python benchmarks/moe_vs_dense.py [--steps 300] [--threads 1] [--out benchmarks/results] [--tiny]

Both runs are recipes/llama-moe-clm.yaml (WikiText-2: wiki.test.raw to train, tokens.valid.txt to
validate) at one small shape: 4 layers x 128 (4 heads, 2 kv heads), block 128, batch 16, BPE 4096, the
same seed, schedule and order of batches. MoE: 8 SwiGLU experts of width 256, top-2 (renormalised),
load-balancing loss 0.01, z-loss 0.001. Dense: one SwiGLU MLP of width 512 = top_k x 256, so every token
runs the same feed-forward FLOPs (the MoE adds its router, E x C per block). The dense run reuses the MoE
run's tokenizer. 300 steps x 2,048 tokens = 1.8 epochs of the 348k training tokens, about 4 minutes of
one CPU thread per run. Reported: validation loss (10 batches) every 25 steps and at the end, training
loss, the median step time (from the log's tokens/s: wall time, so a loaded machine inflates it) and the
process CPU time of each run, parameters total and active, and the MoE's per-block load CV.

Prints one JSON line per run and a summary; writes moe-vs-dense-<date>.json and .png (matplotlib).
--tiny: a few steps of a smaller shape (tests of this script; not a result).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "llama-moe-clm.yaml"


def shape(tiny: bool) -> dict:
    if tiny:
        return dict(
            n_layer=1, d_model=32, n_head=2, n_kv_head=1, expert_d_ff=32, block=32, batch=4, vocab=300
        )
    return dict(
        n_layer=4, d_model=128, n_head=4, n_kv_head=2, expert_d_ff=256, block=128, batch=16, vocab=4096
    )


def run(name: str, overrides: list[str]) -> dict:
    from plmkit.config import load_config
    from plmkit.io import load
    from plmkit.model.moe import Experts
    from plmkit.recipes.config import RecipeConfig
    from plmkit.recipes.pretrain import pretrain
    from plmkit.train.logging import read_metrics

    config = load_config(RecipeConfig, RECIPE, overrides)
    started, cpu = time.time(), time.process_time()
    result = pretrain(config)
    wall, cpu = time.time() - started, time.process_time() - cpu
    rows = read_metrics(Path(config.run_dir) / "metrics.jsonl")
    tokens_per_step = config.train.batch_size * config.data.block_size
    step_s = [tokens_per_step / r["tokens_per_s"] for r in rows if r.get("tokens_per_s")]
    model, _ = load(result["checkpoint"])
    c = model.config
    total = sum(p.numel() for p in model.parameters())
    experts = sum(p.numel() for m in model.modules() if isinstance(m, Experts) for p in m.parameters())
    active = total - experts + (experts * c.top_k // c.n_experts if c.n_experts else 0)
    balance = [r["moe_load_cv"] for r in rows if "moe_load_cv" in r]
    return {
        "run": name,
        "parameters": total,
        "active_parameters": active,
        "embedding_parameters": c.vocab_size * c.d_model * (1 if c.tie_embeddings else 2),
        "val_curve": [{"step": r["step"], "val_loss": r["val_loss"]} for r in rows if "val_loss" in r],
        "final_val_loss": result["val_loss"],
        "initial_val_loss": result.get("initial_val_loss"),
        "final_train_loss": [r["loss"] for r in rows if "loss" in r][-1],
        "median_step_s": statistics.median(step_s) if step_s else None,
        "wall_s": round(wall, 1),
        "cpu_s": round(
            cpu, 1
        ),  # this process's CPU time (evaluations included; the MoE run trains the tokenizer)
        "tokens": result["tokens"],
        "load_cv_first_last": [balance[0], balance[-1]] if balance else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None, help="default: benchmarks/results (--tiny: nothing written)")
    parser.add_argument("--tiny", action="store_true")
    args = parser.parse_args()
    if args.out:
        args.out = str(Path(args.out).resolve())
    os.chdir(ROOT)  # the recipe names its data relative to the repository root
    s = shape(args.tiny)
    steps = 3 if args.tiny else args.steps
    every = 1 if args.tiny else 25
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        common = [
            f"model.n_layer={s['n_layer']}", f"model.d_model={s['d_model']}", f"model.n_head={s['n_head']}",
            f"model.n_kv_head={s['n_kv_head']}", "model.max_positions=256", "model.dropout=0.0",
            f"data.block_size={s['block']}", f"train.batch_size={s['batch']}", f"train.steps={steps}",
            f"train.threads={args.threads}", "train.precision=fp32", "schedule.warmup_steps=" + str(min(25, steps)),
            f"eval.every={every}", f"eval.batches={2 if args.tiny else 10}", f"log.every={every if args.tiny else 5}",
            "checkpoint.every=0", "log.tensorboard=false", "log.plot=false", f"data.cache_dir={tmp}/cache",
            "seed=0",
        ]  # fmt: skip
        moe = [
            *common,
            f"model.d_ff={s['expert_d_ff']}",
            f"tokenizer.vocab_size={s['vocab']}",
            f"out_dir={tmp}/moe",
        ]
        results["moe"] = run("moe", moe)
        print(json.dumps(results["moe"]), flush=True)
        dense = [
            *common,
            "model.n_experts=null",
            "model.router_aux_loss_coef=0",
            "model.router_z_loss_coef=0",
            f"model.d_ff={2 * s['expert_d_ff']}",  # top_k x the expert width: the same active FFN
            f"tokenizer.path={tmp}/moe/tokenizer",
            f"out_dir={tmp}/dense",
        ]
        results["dense"] = run("dense", dense)
        print(json.dumps(results["dense"]), flush=True)
    m, d = results["moe"], results["dense"]
    gap = d["final_val_loss"] - m["final_val_loss"]
    summary = {
        "summary": True,
        "shape": {**s, "experts": 8, "top_k": 2, "dense_d_ff": 2 * s["expert_d_ff"], "steps": steps},
        "val_loss_moe": m["final_val_loss"],
        "val_loss_dense": d["final_val_loss"],
        "val_loss_gain": gap,  # > 0: the MoE is better
        "step_time_ratio_moe_over_dense": (
            m["median_step_s"] / d["median_step_s"] if m["median_step_s"] and d["median_step_s"] else None
        ),
        "winner": "moe" if gap > 0 else "dense" if gap < 0 else "tie",
        "threads": args.threads,
        "date": time.strftime("%Y-%m-%d"),
    }
    print(json.dumps(summary), flush=True)
    if args.tiny and not args.out:
        return
    out = Path(args.out or ROOT / "benchmarks" / "results")
    out.mkdir(parents=True, exist_ok=True)
    from benchkit.report import output_stem

    stem = output_stem(out, "moe-vs-dense")
    stem.with_suffix(".json").write_text(json.dumps({**results, "summary": summary}, indent=1) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, data in results.items():
        label = (
            f"{name} ({data['active_parameters'] / 1e6:.2f}M active, {data['parameters'] / 1e6:.2f}M total)"
        )
        ax.plot(
            [p["step"] for p in data["val_curve"]],
            [p["val_loss"] for p in data["val_curve"]],
            "o-",
            label=label,
        )
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("WikiText-2 validation loss")
    ax.set_title("8-expert top-2 MoE vs dense, same active parameters")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(stem.with_suffix(".png"), dpi=110)


if __name__ == "__main__":
    main()
