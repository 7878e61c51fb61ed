"""`plm <recipe> RECIPE.yaml key=value --resume [CKPT] --nproc N --overwrite`, one subcommand per entry of
plmkit.recipes.RECIPES, and `plm demo` (the quickstart, whose recipe ships inside the package).

Overrides may come anywhere after the recipe file, before or after the options; `--resume` followed by
an override (a dotted `key=value`) takes no value: it resumes the latest checkpoint."""

from __future__ import annotations

import argparse
import os
import re
import shlex
import sys
from pathlib import Path

from plmkit.cli.parser import PlmParser
from plmkit.config.fields import Range

OVERRIDE = re.compile(r"[A-Za-z_][\w.-]*=")  # key=value; a path such as runs/lr=3e-4/... has a "/" first
OVERWRITE_HELP = (
    "start a new run even if the run folder holds one: the old folder is renamed, whole, to "
    "<run folder>.old-<YYYYmmdd-HHMMSS> beside it (nothing is deleted) once every check has passed"
)


class RecipeParser(PlmParser):
    """A recipe subcommand's parser: options and overrides intermixed (argparse.parse_intermixed_args)."""

    _inner = False  # parse_known_intermixed_args calls parse_known_args itself

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        if self._inner:
            return super().parse_known_args(args, namespace)
        self._inner = True
        try:
            return self.parse_known_intermixed_args(bare_resume(list(args or [])), namespace)
        finally:
            self._inner = False


def bare_resume(args: list[str]) -> list[str]:
    """`--resume` before an override or at the end takes no value: written `--resume=` (the latest)."""
    return [
        "--resume=" if a == "--resume" and (i + 1 == len(args) or OVERRIDE.match(args[i + 1])) else a
        for i, a in enumerate(args)
    ]


def add_recipes(sub: argparse._SubParsersAction) -> None:
    from plmkit.recipes import RECIPES  # names and help only: no torch

    for name, recipe in RECIPES.items():
        p = sub.add_parser(
            name,
            help=recipe.help,
            description=(
                f"{recipe.description} Override any key with dotted key=value pairs, e.g. train.steps=100 "
                "model.n_layer=2, anywhere after RECIPE.yaml. A new run needs an empty run folder (out_dir): "
                "continue the run there with --resume, give another name= or out_dir=, or --overwrite."
            ),
        )
        p.__class__ = RecipeParser  # argparse's add_parser builds a PlmParser
        p.add_argument("recipe_file", metavar="RECIPE.yaml", help="recipe file (see recipes/)")
        p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides")
        p.add_argument(
            "--resume",
            nargs="?",
            const=True,
            default=None,
            metavar="CKPT",
            help="continue the run from its latest checkpoint (or from CKPT); its recipe.json is kept and "
            "recipe-history.jsonl records each resume's changed keys",
        )
        p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
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
    from plmkit.train.distributed.launch import LAUNCHER_VARIABLE, is_rank_zero, launch_recipe

    recipe = RECIPES[args.recipe_name]
    if args.resume in (None, False):
        resume_override, resume_flags = [], []
    elif args.resume in (True, ""):
        resume_override, resume_flags = ["resume=true"], ["--resume"]
    else:
        resume_override, resume_flags = [f"resume={args.resume}"], [f"--resume={args.resume}"]
    overwrite = ["overwrite=true"] if args.overwrite else []
    # A bad recipe fails here, before any process starts.
    config = load_config(
        recipe.load_config_class(), args.recipe_file, [*args.overrides, *resume_override, *overwrite]
    )
    recipe.load_validate()(config)  # the whole recipe and its run folder, before any process starts
    workers_argv = [
        args.recipe_name,
        args.recipe_file,
        *args.overrides,
        *resume_flags,
        *(["--overwrite"] if args.overwrite else []),
    ]
    try:
        code = launch_recipe(args.nproc, config, workers_argv)
        if code is not None:  # the job ran in the processes started
            return code
        result = recipe.load_run()(config)
    except KeyboardInterrupt:
        if is_rank_zero() and not os.environ.get(LAUNCHER_VARIABLE):  # the launcher speaks for its workers
            print(f"interrupted; {again(args, config)}", file=sys.stderr)
        return 130
    if is_rank_zero():
        print(json.dumps(result))
    return 0


def again(args: argparse.Namespace, config: object) -> str:
    """The command that continues an interrupted run: --resume from the run folder's latest checkpoint;
    before the first one, the same command (adding --overwrite where the folder now holds files)."""
    from plmkit.train.checkpoint import latest_checkpoint

    command = ["plm", args.recipe_name, args.recipe_file, *args.overrides]
    nproc = ["--nproc", str(args.nproc)] if args.nproc else []
    run_dir = getattr(config, "run_dir", None)
    if run_dir is None or latest_checkpoint(Path(run_dir)) is not None:
        return "resume with: " + shlex.join([*command, "--resume", *nproc])
    if args.resume not in (None, True, ""):
        command += ["--resume", str(args.resume)]
    held = os.path.isdir(run_dir) and any(os.scandir(run_dir))
    overwrite = ["--overwrite"] if held or args.overwrite else []
    return "no checkpoint was written yet; start again with: " + shlex.join([*command, *overwrite, *nproc])


def add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="the quickstart: train a tokenizer and a small GPT on CPU, then generate",
        description="Train a byte-level BPE tokenizer and a small GPT on the Python language "
        "reference shipped with CPython (about 3 minutes on 2 cores), report "
        "validation perplexity, save a checkpoint and a loss curve, generate samples. "
        "The settings are recipes/demo.yaml; data=PATH trains on your own text (in runs/demo-<file name>) "
        "and any recipe key can be overridden. A second demo into the same run folder is refused: "
        "give another name= or --overwrite.",
    )
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="data=PATH, or recipe keys such as train.steps=100 name=mine",
    )
    p.__class__ = RecipeParser  # overrides before and after --overwrite
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    p.set_defaults(run=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from plmkit.recipes.demo import run_demo

    run_demo([*args.overrides, *(["overwrite=true"] if args.overwrite else [])])
    return 0
