"""The lecture's central claim, measured: the same small Chinese BERT fine-tuned on ChnSentiCorp from the
whole-word-masking pre-training (recipes/bert-wwm-zh.yaml) and from a random initialisation, with the same
recipe (recipes/finetune/chnsenticorp.yaml), steps, data, seed and tokenizer.

    plm pretrain recipes/bert-wwm-zh.yaml                    # first: the pre-trained checkpoint
    python benchmarks/pretraining_helps.py [--steps 300] [--out benchmarks/results]

Writes pretraining-helps-<date>.json (dev accuracy curves and the final dev / test metrics of both runs)
and a PNG of the two dev-accuracy curves; prints one JSON line per run and the difference.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(recipe: Path, overrides: list[str]) -> tuple[dict, list[dict]]:
    from plmkit.config import load_config
    from plmkit.recipes.finetune import finetune
    from plmkit.recipes.finetune_config import FinetuneConfig
    from plmkit.train.logging import read_metrics

    config = load_config(FinetuneConfig, recipe, overrides)
    started = time.time()
    result = finetune(config)
    result["wall_seconds"] = round(time.time() - started, 1)
    curve = [
        {"step": r["step"], "dev_accuracy": r["dev_accuracy"]}
        for r in read_metrics(Path(config.run_dir) / "metrics.jsonl")
        if "dev_accuracy" in r
    ]
    return result, curve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default=str(ROOT / "recipes" / "finetune" / "chnsenticorp.yaml"))
    parser.add_argument(
        "--pretrained", default=str(ROOT / "runs" / "bert-wwm-zh" / "checkpoints" / "step-00001000")
    )
    parser.add_argument("--steps", type=int, default=None, help="default: the recipe's")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "overrides", nargs="*", help="recipe overrides for both runs, e.g. task.max_length=64"
    )
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args()
    from plmkit.io import read_header

    architecture = read_header(Path(args.pretrained) / "plmkit.json")["model"]
    shape = ["n_layer", "d_model", "n_head", "d_ff", "max_positions", "type_vocab_size"]
    common = ["log.tensorboard=false", "log.plot=false", "checkpoint.every=0", "keep_best=true"]
    common += [f"train.steps={args.steps}", "epochs=null"] if args.steps else []
    common += [f"train.threads={args.threads}"] if args.threads else []
    common += args.overrides
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        pretrained = [f"init_from={args.pretrained}", f"out_dir={tmp}/pretrained"]
        random_init = [
            "init_from=null",
            "model.preset=bert-tiny",
            *(f"model.{k}={architecture[k]}" for k in shape),
            f"tokenizer.path={args.pretrained}",  # the same vocabulary
            f"out_dir={tmp}/random",
        ]
        for name, overrides in (("pretrained", pretrained), ("random_init", random_init)):
            result, curve = run(Path(args.recipe), [*common, *overrides])
            results[name] = {
                "dev": result.get("dev"), "test": result.get("test"), "best": result.get("best"),
                "train_seconds": result["train_seconds"], "curve": curve,
            }  # fmt: skip
            print(json.dumps({"run": name, **results[name]}))
    gain = results["pretrained"]["dev"]["accuracy"] - results["random_init"]["dev"]["accuracy"]
    winner = "pretrained" if gain > 0 else "random_init" if gain < 0 else "tie"
    summary = {"dev_accuracy_gain_points": round(100 * gain, 2), "winner": winner}
    print(json.dumps(summary))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from benchkit.report import output_stem

    stem = output_stem(out, "pretraining-helps")
    stem.with_suffix(".json").write_text(json.dumps({**results, **summary}, indent=1) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, data in results.items():
        ax.plot(
            [p["step"] for p in data["curve"]],
            [p["dev_accuracy"] for p in data["curve"]],
            marker="o",
            label=name,
        )
    ax.set_xlabel("fine-tuning step")
    ax.set_ylabel("ChnSentiCorp dev accuracy")
    ax.set_title("pre-trained (WWM) vs random initialisation")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(stem.with_suffix(".png"), dpi=120)


if __name__ == "__main__":
    main()
