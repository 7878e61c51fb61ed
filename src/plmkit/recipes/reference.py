"""The recipe reference: every numeric key of a recipe, its default, its range and its one "off" spelling,
as the markdown table of docs/recipe-reference.md (a test keeps the file equal to this output).

    python -m plmkit.cli.reference    # prints docs/recipe-reference.md's tables (this one and the CLI's)

The ranges are the ones plmkit.config checks while a recipe is read (`Annotated[int, Range(ge=1)]` on the
section dataclasses), so the table cannot drift from the checks.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from plmkit.config.fields import UNSET, Range, numeric_fields, type_name
from plmkit.data.objectives import OBJECTIVES, objective_class
from plmkit.recipes.config import RecipeConfig

EXCLUDED_OPTIONS = ("tokenizer", "seed")  # an objective's tokenizer and seed come from the recipe


def recipe_rows() -> Iterator[tuple[str, Any, Any, list[Range]]]:
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


def _default(value: Any) -> str:
    if value is UNSET:
        return "the preset's"
    if value is None:
        return "null"
    if isinstance(value, tuple):
        return "[" + ", ".join(_default(v) for v in value) + "]"
    return str(value)


def _range(ranges: list[Range]) -> tuple[str, str]:
    unique = list(dict.fromkeys(ranges))  # betas: one range per item, the same
    declared = unique[0] if len(unique) == 1 else None
    if declared is None:
        return "; ".join(r.bounds() for r in unique), ""
    off = f"`{declared.off}`: {declared.means}" if declared.off is not None else "—"
    return declared.bounds(), off


def table() -> str:
    lines = ["| key | type | default | range | off / default spelling |", "|---|---|---|---|---|"]
    for key, tp, default, ranges in recipe_rows():
        bounds, off = _range(ranges)
        kind = type_name(tp).replace(" | None", " or null")
        lines.append(f"| `{key}` | {kind} | {_default(default)} | {bounds} | {off} |")
    return "\n".join(lines) + "\n"
