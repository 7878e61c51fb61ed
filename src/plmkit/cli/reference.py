"""The generated tables of docs/recipe-reference.md: every numeric pre-training recipe key and every key
of the fine-tuning recipe's own sections (plmkit.recipes.reference), and every numeric `plm` option, with
its range and "off" spelling. A test keeps the file equal to them.

    python -m plmkit.cli.reference                           # the tables, with their markers
    python -m plmkit.cli.reference docs/recipe-reference.md  # rewrite them between the file's markers
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path

from plmkit.recipes.reference import finetune_table
from plmkit.recipes.reference import table as recipe_table

RECIPE_MARKERS = ("<!-- recipe-table: python -m plmkit.cli.reference -->", "<!-- /recipe-table -->")
FINETUNE_MARKERS = ("<!-- finetune-table: python -m plmkit.cli.reference -->", "<!-- /finetune-table -->")
OPTION_MARKERS = ("<!-- option-table: python -m plmkit.cli.reference -->", "<!-- /option-table -->")


def option_rows(parser: argparse.ArgumentParser, command: str = "plm") -> Iterator[tuple[str, ...]]:
    """(command, option, type, default, range) of every option whose type is a Range's (Range.option)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            seen = set()
            for name, sub in action.choices.items():
                if id(sub) not in seen:  # aliases share a parser
                    seen.add(id(sub))
                    yield from option_rows(sub, f"{command} {name}")
        elif hasattr(action.type, "range"):
            default = "—" if action.default is None else str(action.default)
            declared = action.type.range
            yield command, action.option_strings[0], action.type.__name__, default, declared.describe()


def option_table(parser: argparse.ArgumentParser) -> str:
    lines = ["| command | option | type | default | range |", "|---|---|---|---|---|"]
    for command, option, kind, default, described in option_rows(parser):
        lines.append(f"| `{command}` | `{option}` | {kind} | {default} | {described} |")
    return "\n".join(lines) + "\n"


def tables() -> dict[tuple[str, str], str]:
    from plmkit.cli import build_parser

    return {
        RECIPE_MARKERS: recipe_table(),
        FINETUNE_MARKERS: finetune_table(),
        OPTION_MARKERS: option_table(build_parser()),
    }


def update(path: Path) -> None:
    """Replace the generated tables between their markers in `path` (docs/recipe-reference.md)."""
    text = path.read_text(encoding="utf-8")
    for (start, end), table in tables().items():
        if start not in text or end not in text:
            raise SystemExit(f"{path}: put the lines {start} and {end} where this table goes, then rerun")
        head, rest = text.split(start, 1)
        text = head + start + "\n" + table + end + rest.split(end, 1)[1]
    path.write_text(text, encoding="utf-8")


if __name__ == "__main__":  # `python -m plmkit.cli.reference [docs/recipe-reference.md]`: print or update
    if len(sys.argv) > 1:
        update(Path(sys.argv[1]))
    else:
        for (start, end), text in tables().items():
            print(f"{start}\n{text}{end}\n")
