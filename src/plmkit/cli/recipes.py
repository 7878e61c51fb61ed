"""`plm <recipe> RECIPE.yaml key=value --resume [CKPT] --nproc N`, one subcommand per entry of
plmkit.recipes.RECIPES, and `plm demo` (the quickstart, whose recipe ships inside the package)."""

from __future__ import annotations

import argparse

from plmkit.config.fields import Range


def add_recipes(sub: argparse._SubParsersAction) -> None:
    from plmkit.recipes import RECIPES  # names and help only: no torch

    for name, recipe in RECIPES.items():
        p = sub.add_parser(
            name,
            help=recipe.help,
            description=(
                f"{recipe.description} Override any key with dotted key=value pairs, e.g. train.steps=100 "
                "model.n_layer=2."
            ),
        )
        p.add_argument("recipe_file", metavar="RECIPE.yaml", help="recipe file (see recipes/)")
        p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides")
        p.add_argument(
            "--resume",
            nargs="?",
            const=True,
            default=None,
            metavar="CKPT",
            help="continue the run from its latest checkpoint (or from CKPT)",
        )
        p.add_argument(
            "--nproc",
            type=Range(ge=1).option(int, "--nproc"),
            default=None,
            metavar="N",
            help="start N training processes on this machine under torchrun (distributed.strategy: "
            f"auto = ddp, or fsdp / deepspeed); the same as torchrun --nproc-per-node N -m plmkit "
            f"{name} ...",
        )
        p.set_defaults(run=_run_recipe, recipe_name=name)


def _run_recipe(args: argparse.Namespace) -> int:
    import json

    from plmkit.config import load_config
    from plmkit.recipes import RECIPES
    from plmkit.train.distributed.launch import is_rank_zero, launch_recipe

    recipe = RECIPES[args.recipe_name]
    if args.resume is None:
        resume_override, resume_flags = [], []
    elif args.resume is True:
        resume_override, resume_flags = ["resume=true"], ["--resume"]
    else:
        resume_override, resume_flags = [f"resume={args.resume}"], ["--resume", args.resume]
    # A bad recipe fails here, before any process starts.
    config = load_config(recipe.load_config_class(), args.recipe_file, [*args.overrides, *resume_override])
    recipe.load_validate()(config)  # the whole recipe, before any process starts or file is written
    workers_argv = [args.recipe_name, args.recipe_file, *args.overrides, *resume_flags]
    code = launch_recipe(args.nproc, config, workers_argv)
    if code is not None:  # the job ran in the processes started
        return code
    result = recipe.load_run()(config)
    if is_rank_zero():
        print(json.dumps(result))
    return 0


def add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="the quickstart: train a tokenizer and a small GPT on CPU, then generate",
        description="Train a byte-level BPE tokenizer and a small GPT on the Python language "
        "reference shipped with CPython (about 3 minutes on 2 cores), report "
        "validation perplexity, save a checkpoint and a loss curve, generate samples. "
        "The settings are recipes/demo.yaml; data=PATH trains on your own text and "
        "any recipe key can be overridden.",
    )
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="data=PATH, or recipe keys such as train.steps=100 out_dir=runs/mine",
    )
    p.set_defaults(run=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from plmkit.recipes.demo import run_demo

    run_demo(args.overrides)
    return 0
