"""GRPO's reward functions: built-in verifiers and the user's Python callables, weighted and summed.

    rewards: [{function: gsm8k_flexible}, {function: my_rewards:length_penalty, weight: 0.1}]

A reward function is called once per generation batch with one entry per completion (the prompt repeated
for each of its num_generations completions), the signature of trl's GRPOTrainer:

    function(prompts=[str], completions=[str], completion_ids=[[int]], **columns) -> [float | None]

`columns` holds every column of the prompt rows (`gold`: the reference answer, when the format has one),
each repeated like the prompts; a function takes what it needs and `**kwargs` for the rest. None means
"does not apply to this completion" (trl's convention): it adds nothing to the weighted sum, and a
completion that no function scores gets its group's mean reward (an advantage of 0).

Built-ins: gsm8k_strict / gsm8k_flexible (1.0 when the number extracted by lm-eval's strict / flexible
rule, plmkit.prompting.answers, equals `gold`, else 0.0) and arithmetic (the synthetic task's verifier).
A user function is "module:function" (importable, the working directory included) or
"path/to/file.py:function".
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from plmkit.errors import ConfigError, DataError, did_you_mean
from plmkit.prompting.answers import extract_flexible, extract_strict, is_correct

RewardCallable = Callable[..., Sequence[float | None]]


def gsm8k_strict(completions: Sequence[str], gold: Sequence[str], **_: Any) -> list[float]:
    """1.0 when the completion's "The answer is N" / "#### N" equals the gold number."""
    return [float(is_correct(extract_strict(c), g)) for c, g in zip(completions, gold, strict=True)]


def gsm8k_flexible(completions: Sequence[str], gold: Sequence[str], **_: Any) -> list[float]:
    """1.0 when the completion's last number equals the gold number."""
    return [float(is_correct(extract_flexible(c), g)) for c, g in zip(completions, gold, strict=True)]


def arithmetic(prompts: Sequence[str], completions: Sequence[str], **_: Any) -> list[float]:
    """The synthetic arithmetic task's verifier (plmkit.prompting.arithmetic)."""
    from plmkit.prompting.arithmetic import reward

    return [float(reward(p, c)) for p, c in zip(prompts, completions, strict=True)]


BUILTIN: dict[str, RewardCallable] = {
    "gsm8k_strict": gsm8k_strict,
    "gsm8k_flexible": gsm8k_flexible,
    "arithmetic": arithmetic,
}
NEEDS_GOLD = ("gsm8k_strict", "gsm8k_flexible")
RESERVED = ("prompts", "completions", "completion_ids")  # the call's own arguments: never a column


@dataclass
class RewardFunction:
    name: str  # the name in the logs: reward/<name>
    function: RewardCallable
    weight: float
    where: str  # "rewards[0]": for messages


def load_reward_function(spec: str, where: str) -> RewardCallable:
    """A built-in name, "module:function" or "file.py:function" -> the callable (ConfigError naming
    `where` and the fix when it cannot be imported or is not callable)."""
    if spec in BUILTIN:
        return BUILTIN[spec]
    module_name, sep, attribute = spec.rpartition(":")
    if not sep or not module_name or not attribute:
        raise ConfigError(
            f"{where}.function={spec!r} is neither a built-in reward "
            f'({", ".join(BUILTIN)}){did_you_mean(spec, BUILTIN)} nor "module:function"'
        )
    try:
        module = _import(module_name)
    except Exception as e:  # the user's module may fail in any way while it is imported
        raise ConfigError(
            f"{where}.function={spec!r}: cannot import {module_name} ({type(e).__name__}: {e}); put the module "
            "on PYTHONPATH or in the working directory, or give a file: path/to/rewards.py:function"
        ) from None
    function = getattr(module, attribute, None)
    if function is None:
        names = [n for n in dir(module) if not n.startswith("_")]
        raise ConfigError(
            f"{where}.function={spec!r}: {module_name} has no {attribute!r}{did_you_mean(attribute, names)}"
        )
    if not callable(function) or inspect.isclass(function):
        raise ConfigError(f"{where}.function={spec!r} is not a function")
    return function


def _import(module_name: str) -> Any:
    if module_name.endswith(".py"):
        path = Path(module_name).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"no file {path}")
        name = f"plmkit_rewards_{path.stem}"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # registered first, as an import does (dataclasses look it up)
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
        return module
    cwd = str(Path.cwd())
    added = cwd not in sys.path
    if added:  # `plm` (a console script) does not put the working directory on the path; python -m does
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(module_name)
    finally:
        if added:
            sys.path.remove(cwd)


def build_reward_functions(specs: Sequence[Any]) -> list[RewardFunction]:
    """The recipe's `rewards` list, each imported and checked (names unique, weights finite)."""
    if not specs:
        raise ConfigError(
            "the recipe has no rewards; add e.g. rewards=[{function: gsm8k_flexible}] (built-ins: "
            f'{", ".join(BUILTIN)}) or a "module:function"'
        )
    out: list[RewardFunction] = []
    for i, spec in enumerate(specs):
        where = f"rewards[{i}]"
        if not isinstance(spec.weight, (int, float)) or not math.isfinite(spec.weight):
            raise ConfigError(f"{where}.weight must be a finite number, got {spec.weight!r}")
        function = load_reward_function(str(spec.function), where)
        name = spec.name or str(spec.function).rpartition(":")[2]
        if any(f.name == name for f in out):
            raise ConfigError(f"{where}: two reward functions are named {name!r}; give one a name: key")
        out.append(RewardFunction(name, function, float(spec.weight), where))
    return out


def check_gold(functions: Sequence[RewardFunction], split: str, columns: Sequence[dict[str, Any]]) -> None:
    """The built-in verifiers compare with the reference answer: every prompt row must have one."""
    needs = [f for f in functions if f.function in [BUILTIN[n] for n in NEEDS_GOLD]]
    missing = next((i for i, c in enumerate(columns) if "gold" not in c), None)
    if needs and missing is not None:
        f = needs[0]
        raise ConfigError(
            f"{f.where}.function={f.name} compares with the reference answer, but data.{split}'s prompt "
            f"{missing} has none; use data.format=gsm8k, or data.format=prompt with an answer column "
            "(data.columns.answer=COLUMN)"
        )


def score(
    functions: Sequence[RewardFunction],
    prompts: Sequence[str],
    completions: Sequence[str],
    completion_ids: Sequence[Sequence[int]],
    columns: dict[str, Sequence[Any]],
) -> torch.Tensor:
    """(N, F) fp32: each function's reward of each completion (nan where it returned None)."""
    n = len(completions)
    out = torch.full((n, len(functions)), math.nan)
    columns = {k: v for k, v in columns.items() if k not in RESERVED}
    for j, f in enumerate(functions):
        try:
            values = list(
                f.function(
                    prompts=list(prompts),
                    completions=list(completions),
                    completion_ids=list(completion_ids),
                    **columns,
                )
            )
        except Exception as e:  # the user's function: one error line that names it
            raise DataError(
                f"{f.where} ({f.name}) failed: {type(e).__name__}: {e}; fix the function (it is called as "
                "function(prompts=[...], completions=[...], completion_ids=[...], **columns) -> [float | None])"
            ) from e
        if len(values) != n:
            raise DataError(
                f"{f.where} ({f.name}) returned {len(values)} rewards for {n} completions; return one "
                "number (or None) per completion"
            )
        for i, v in enumerate(values):
            if v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise DataError(
                    f"{f.where} ({f.name}) returned {v!r} for completion {i}; return a finite number or None"
                )
            out[i, j] = float(v)
    return out


def combine(per_function: torch.Tensor, weights: Sequence[float], group_size: int) -> torch.Tensor:
    """(N,) the weighted sum of the functions' rewards (None / nan adds nothing); a completion that no
    function scored gets the mean of its group's scored ones (0 when none is), so its advantage is 0."""
    w = torch.tensor(list(weights), dtype=per_function.dtype)
    total = (per_function * w).nansum(dim=1)  # (N,)
    unscored = per_function.isnan().all(dim=1)
    if bool(unscored.any()):
        groups = total.masked_fill(unscored, math.nan).view(-1, group_size)
        means = groups.nanmean(dim=1).nan_to_num(0.0).repeat_interleave(group_size)
        total = torch.where(unscored, means, total)
    return total
