"""The `plm` command line: parsing, one-line errors and exit codes; the work is done by library calls.

Each subcommand is a pair of small functions in one of this package's modules: `add_<name>(subparsers)`
declares its arguments and `_run_<name>(args) -> int` makes one call into the library. Heavy imports
(torch, the model) happen inside the `_run_` functions so that `plm --help` answers at once. The
training jobs (`plm pretrain ...`) are made from the recipe registry, plmkit.recipes.RECIPES: a new
recipe needs no code here.

User errors (`PlmkitError`) print one line `error: <message>` to stderr and exit with code 2;
Ctrl-C exits with 130. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from plmkit import __version__
from plmkit.cli.chat import add_chat
from plmkit.cli.checkpoints import add_convert, add_export_peft, add_info, add_merge_lora, add_quantize
from plmkit.cli.embed import add_embed
from plmkit.cli.evaluate import add_evaluate
from plmkit.cli.inference import add_eval, add_generate
from plmkit.cli.parser import PlmParser
from plmkit.cli.recipes import add_demo, add_recipes
from plmkit.cli.serve import add_serve
from plmkit.cli.tokenizer import add_tokenizer
from plmkit.errors import PlmkitError

# In the order of `plm --help`.
COMMANDS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (
    add_generate,
    add_chat,
    add_info,
    add_demo,
    add_convert,
    add_tokenizer,
    add_recipes,
    add_eval,
    add_evaluate,
    add_embed,
    add_serve,
    add_merge_lora,
    add_quantize,
    add_export_peft,
)


def build_parser() -> argparse.ArgumentParser:
    parser = PlmParser(
        prog="plm",
        description="plmkit: pre-train, fine-tune and align Transformer language models.",
    )
    parser.add_argument("--version", action="version", version=f"plm {__version__}")
    sub = parser.add_subparsers(dest="command", title="commands", metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version: argparse's code (0)
        return 0 if exc.code is None else exc.code if isinstance(exc.code, int) else 2
    except PlmkitError as exc:  # a usage error, or an option's value out of its range (plmkit.config.Range)
        report_user_error(exc)
        return exc.exit_code
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return args.run(args)
    except PlmkitError as exc:
        report_user_error(exc)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `plm generate ... | head`: the reader left; exit quietly
        # Point stdout at devnull so the interpreter's final flush doesn't fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def report_user_error(exc: PlmkitError) -> None:
    """One line whatever the message, so scripts can grep it; under torchrun, one line for all processes."""
    message = " ".join(line.strip() for line in str(exc).splitlines() if line.strip()) or type(exc).__name__
    from plmkit.train.distributed.launch import is_worker, report_worker_error

    if is_worker():
        report_worker_error(message)
    else:
        print(f"error: {message}", file=sys.stderr)
