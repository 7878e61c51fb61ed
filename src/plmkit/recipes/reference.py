"""The recipe reference: every numeric key of a pre-training recipe, and every key of the fine-tuning
recipe's own sections, with its default, its range (or choices) and its one "off" spelling, as the markdown
tables of docs/recipe-reference.md (a test keeps the file equal to this output).

    python -m plmkit.cli.reference    # prints docs/recipe-reference.md's tables (these and the CLI's)

The ranges are the ones plmkit.config checks while a recipe is read (`Annotated[int, Range(ge=1)]` on the
section dataclasses), and the defaults and choices are the dataclasses' own, so the tables cannot drift
from the checks.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Iterator
from typing import Any, Literal

from plmkit.config.fields import (
    UNSET,
    Range,
    declared_ranges,
    field_types,
    join,
    numeric_fields,
    strip_optional,
    type_name,
)
from plmkit.data.objectives import OBJECTIVES, objective_class
from plmkit.recipes.config import RecipeConfig
from plmkit.recipes.finetune_config import FinetuneConfig

FINETUNE_SECTIONS = ("task", "data", "epochs", "early_stopping", "keep_best")  # not in a pre-training recipe

Row = tuple[str, Any, Any, list[Range]]  # (key, annotation, default, declared ranges)

EXCLUDED_OPTIONS = ("tokenizer", "seed")  # an objective's tokenizer and seed come from the recipe


def recipe_rows() -> Iterator[Row]:
    """(key, annotation, default, ranges) of the recipe sections, every objective's options (and model
    options) and every peft method's options."""
    from plmkit.peft import METHOD_OPTIONS

    yield from numeric_fields(RecipeConfig)
    for name in OBJECTIVES:
        objective = objective_class(name)
        for key, tp, default, ranges in numeric_fields(objective, "objective.options"):
            if key.rsplit(".", 1)[-1] not in EXCLUDED_OPTIONS:
                yield key.replace("objective.options", f"objective.options ({name})"), tp, default, ranges
        if objective.model_options is not None:
            path = f"objective.options.model ({name})"
            yield from numeric_fields(objective.model_options, path)
    for method, options in METHOD_OPTIONS.items():
        for key, tp, default, ranges in numeric_fields(options, "peft"):
            yield key.replace("peft.", f"peft.{method}: ", 1), tp, default, ranges


def instance_rows(instance: Any, path: str = "") -> Iterator[Row]:
    """(key, annotation, default, ranges) of every field of a dataclass instance, numeric or not, nested
    sections walked: the defaults are the instance's (FinetuneConfig's optim.lr is 5e-5, not
    OptimConfig's 3e-4)."""
    hints = field_types(type(instance))
    for f in dataclasses.fields(instance):
        if not f.init:
            continue
        tp, key, value = hints.get(f.name, Any), join(path, f.name), getattr(instance, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            yield from instance_rows(value, key)
        else:
            items = typing.get_args(strip_optional(tp))  # tuple[Beta, Beta]: a range per item
            yield key, tp, value, declared_ranges(tp) or [r for a in items for r in declared_ranges(a)]


def finetune_rows() -> Iterator[Row]:
    """The fine-tuning recipe's own sections (task, data, epochs, early_stopping, keep_best), every key,
    then the keys it shares with a pre-training recipe whose fine-tuning default differs."""
    finetune = list(instance_rows(FinetuneConfig()))
    pretrain = {key: default for key, _, default, _ in instance_rows(RecipeConfig())}
    yield from (row for row in finetune if row[0].split(".")[0] in FINETUNE_SECTIONS)
    for row in finetune:
        key, default = row[0], row[2]
        if key.split(".")[0] not in FINETUNE_SECTIONS and key in pretrain and pretrain[key] != default:
            yield row


def _default(value: Any) -> str:
    if value is UNSET:
        return "the preset's"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()  # YAML's spelling
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_default(v) for v in value) + "]"
    return str(value)


def _choices(tp: Any) -> tuple[Any, ...]:
    """The values of a Literal annotation (`X | None` included), else ()."""
    inner = strip_optional(tp)
    return typing.get_args(inner) if typing.get_origin(inner) is Literal else ()


def _kind(tp: Any) -> str:
    choices = _choices(tp)
    if choices:  # the choices go to the range column; the type is theirs
        kind = " | ".join(dict.fromkeys(type(c).__name__ for c in choices))
        return kind + (" or null" if type(None) in typing.get_args(tp) else "")
    return type_name(tp).replace(" | None", " or null")


def _range(tp: Any, ranges: list[Range]) -> tuple[str, str]:
    unique = list(dict.fromkeys(ranges))  # betas: one range per item, the same
    if not unique:  # not a number: its choices, if it has any
        choices = _choices(tp)
        if choices:
            return "one of " + ", ".join(_default(c) for c in choices), "—"
        return ("true or false", "—") if strip_optional(tp) is bool else ("—", "—")
    declared = unique[0] if len(unique) == 1 else None
    if declared is None:
        return "; ".join(r.bounds() for r in unique), ""
    off = f"`{declared.off}`: {declared.means}" if declared.off is not None else "—"
    return declared.bounds(), off


def _table(rows: Iterator[Row]) -> str:
    lines = ["| key | type | default | range | off / default spelling |", "|---|---|---|---|---|"]
    for key, tp, default, ranges in rows:
        bounds, off = _range(tp, ranges)
        lines.append(f"| `{key}` | {_kind(tp)} | {_default(default)} | {bounds} | {off} |")
    return "\n".join(lines) + "\n"


def table() -> str:
    """The pre-training recipe's numeric keys."""
    return _table(recipe_rows())


def finetune_table() -> str:
    """The fine-tuning recipe's own keys, and the shared keys whose default it changes."""
    return _table(finetune_rows())
