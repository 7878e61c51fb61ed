"""`plm evaluate CKPT --task NAME --data FILE [task.x=... data.columns.text=...] [--out DIR]`: a fine-tuned
checkpoint's task metrics (plmkit.recipes.evaluate), printed as a table and written with predictions."""

from __future__ import annotations

import argparse

from plmkit.cli.recipes import RecipeParser


def add_evaluate(sub: argparse._SubParsersAction) -> None:
    from plmkit.evaluate.tasks.config import TASK_NAMES  # names only: no torch

    p = sub.add_parser(
        "evaluate",
        help="task metrics of a fine-tuned checkpoint on a data file (accuracy, F1, EM, ...)",
        description="Evaluate CKPT (a checkpoint written by plm finetune, e.g. runs/NAME/best) on FILE with "
        "the task's metrics; print them and write predictions.jsonl and metrics.json to --out. The task "
        "settings and the data's columns default to the recipe that trained the checkpoint; change them "
        "with dotted overrides such as task.max_length=256 data.columns.text=sentence.",
    )
    p.__class__ = RecipeParser  # overrides before or after the options
    p.add_argument("checkpoint", metavar="CKPT", help="a fine-tuned plmkit checkpoint folder")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="task.* and data.* overrides")
    p.add_argument(
        "--data",
        required=True,
        metavar="FILE",
        help=".jsonl .json .csv .tsv .parquet, SQuAD json or a datasets folder",
    )
    p.add_argument(
        "--task",
        default=None,
        choices=TASK_NAMES,
        metavar="NAME",
        help=" | ".join(TASK_NAMES) + " (default: the checkpoint's)",
    )
    p.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="output folder (default: eval-<CKPT name>-<FILE stem> beside CKPT)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    p.add_argument(
        "--shots",
        type=_shots,
        default=(),
        metavar="K,K,...",
        help="--task icl: evaluate with each number of demonstrations, e.g. 0,1,4,8, and write "
        "accuracy_vs_shots.png",
    )
    p.set_defaults(run=_run_evaluate)


def _shots(text: str) -> tuple[int, ...]:
    from plmkit.errors import ConfigError

    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"--shots {text!r}: give numbers of demonstrations like 0,1,4,8") from None
    if any(v < 0 for v in values):
        raise ConfigError(f"--shots {text!r}: numbers of demonstrations are >= 0")
    return values


def _run_evaluate(args: argparse.Namespace) -> int:
    import json

    from plmkit.recipes.evaluate import evaluate_checkpoint, metrics_table

    result, out = evaluate_checkpoint(
        args.checkpoint, args.data, args.task, args.overrides, args.out, args.overwrite, args.shots
    )
    print(metrics_table(result.metrics))
    print(json.dumps({"out": str(out), **result.metrics}))
    return 0
