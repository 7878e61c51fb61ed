"""The GRPO recipe's inputs: the tokenizer, the policy (a causal LM, built as SFT builds it), the frozen
reference (only when grpo.beta > 0), the prompt rendering and the prompt rows.

A row becomes a prompt in two steps: data.prompt_template (a str.format over the row's columns, e.g.
"Question: {question}\\nAnswer:") gives the prompt text the reward functions see; the chat template then
gives the tokens the policy continues: chat_template null takes the tokenizer's own template when it has
one (an SFT checkpoint carries the one it was trained with) and the prompt text as it is otherwise;
"raw" always the text as it is; a built-in name or Jinja source that template (the text as the user turn,
then the assistant's generation prompt).
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from plmkit.data.sources import SkipReport
from plmkit.data.tasks import read_split
from plmkit.errors import ConfigError, DataError
from plmkit.prompting.answers import gold_answer
from plmkit.prompting.chat import ChatTemplate, chat_prompt_ids
from plmkit.recipes.grpo_config import FORMAT_COLUMNS, GrpoConfig
from plmkit.recipes.sft_inputs import build_causal_lm, sft_template, sft_tokenizer

RAW = "raw"  # chat_template: the prompt text as it is, whatever the tokenizer has


@dataclass
class Prompt:
    text: str  # the prompt text (prompt_template applied): what the reward functions see
    ids: list[int]  # the tokens the policy continues (chat template applied)
    columns: dict[str, Any]  # the row's columns for the reward functions (+ gold: the reference answer)
    where: str  # file:line


class BadPrompt(DataError):
    """A prompt row that cannot be used; `reason` is its kind, counted under data.on_error=skip."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class PromptSplit:
    name: str  # train / dev
    path: str
    prompts: list[Prompt]
    skipped: SkipReport = field(default_factory=SkipReport)


def template_fields(template: str) -> list[str]:
    """The column names a prompt_template formats ("{question}" -> ["question"])."""
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as e:
        raise ConfigError(f"data.prompt_template {template!r} is not a valid format string ({e})") from None
    for name in names:
        if not name.isidentifier():
            raise ConfigError(
                f"data.prompt_template {template!r}: {{{name}}} is not a column name; write "
                "{column} for a column's value and {{ }} for literal braces"
            )
    return list(dict.fromkeys(names))


def columns_read(config: GrpoConfig) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(required, optional) columns of a prompt row: the format's and the template's."""
    required, optional = FORMAT_COLUMNS[config.data.format]
    fields = tuple(f for f in template_fields(config.data.template) if f not in required)
    return required + fields, tuple(o for o in optional if o not in fields)


# ---- tokenizer, models, template ----------------------------------------------------------------------
def grpo_tokenizer(config: GrpoConfig, resume_from: Path | None = None) -> Any:
    return sft_tokenizer(config, resume_from)  # tokenizer.path, else init_from's, else the checkpoint's


def max_sequence_length(config: GrpoConfig) -> int:
    return config.data.max_prompt_length + config.generation.max_new_tokens


LENGTH_KEY = "data.max_prompt_length + generation.max_new_tokens"


def build_policy(config: GrpoConfig, tokenizer: Any) -> torch.nn.Module:
    """The causal LM to train (init_from, or a preset at random), in train mode; every prompt of up to
    data.max_prompt_length tokens with its completion fits its positions."""
    model, _ = build_causal_lm(config, tokenizer, max_sequence_length(config), LENGTH_KEY)
    return model


def build_reference(config: GrpoConfig, tokenizer: Any) -> torch.nn.Module:
    """The frozen reference of the KL term: the policy's starting weights, loaded again (the same seed
    rebuilds a preset's random weights), without gradients."""
    with torch.random.fork_rng():
        torch.manual_seed(config.seed)
        model = build_policy(config, tokenizer)
    return model.eval().requires_grad_(False)


def prompt_template(config: GrpoConfig, tokenizer: Any) -> ChatTemplate | None:
    """The chat template prompts are rendered with, or None for the prompt text as it is."""
    spec = config.chat_template
    if spec == RAW or (spec is None and not getattr(tokenizer, "chat_template", None)):
        return None
    return sft_template(config, tokenizer)  # the given template, or the tokenizer's own; checks its tokens


def prompt_ids(tokenizer: Any, template: ChatTemplate | None, text: str) -> list[int]:
    if template is None:
        return tokenizer.encode(text, add_special_tokens=False)
    return chat_prompt_ids(tokenizer, [{"role": "user", "content": text}], template)


# ---- prompt rows --------------------------------------------------------------------------------------
def read_prompts(
    config: GrpoConfig, split: str, tokenizer: Any, template: ChatTemplate | None, max_positions: int | None
) -> PromptSplit:
    """The prompts of data.<split>. A row whose prompt is longer than data.max_prompt_length tokens (or,
    with the completion, than the model's positions), or whose gsm8k answer has no "#### N", raises its
    DataError (file:line), or with data.on_error=skip is counted."""
    d = config.data
    required, optional = columns_read(config)
    rows = read_split(d.task_data(), split, required, optional)
    limit = d.max_prompt_length
    if max_positions is not None:
        limit = min(limit, max_positions - config.generation.max_new_tokens)
    skipped, prompts = rows.skipped, []
    for row in rows.rows:
        try:
            prompts.append(_prompt(config, row.values, row.where, tokenizer, template, limit))
        except DataError as e:
            if d.on_error == "raise":
                raise DataError(f"{e} (or set data.on_error=skip to skip and count such rows)") from None
            skipped.add(getattr(e, "reason", "answer without a gold number"), row.where)
    if not prompts:
        raise DataError(
            f"data.{split} {rows.path} has no usable prompt ({skipped}); fix the rows or the data section"
        )
    return PromptSplit(split, rows.path, prompts, skipped)


def _prompt(
    config: GrpoConfig,
    values: dict[str, Any],
    where: str,
    tokenizer: Any,
    template: ChatTemplate | None,
    limit: int,
) -> Prompt:
    d = config.data
    text = d.template.format(**{k: "" if v is None else v for k, v in values.items()})
    columns = dict(values)
    if d.format == "gsm8k":
        columns["gold"] = gold_answer(str(values["answer"]), where=f"{where}: answer")
    elif "answer" in values:  # prompt rows: the answer as it is, or a GSM8K rationale's "#### N"
        answer = str(values["answer"])
        columns["gold"] = (
            gold_answer(answer, where=f"{where}: answer") if "#### " in answer else answer.strip()
        )
    ids = prompt_ids(tokenizer, template, text)
    if not ids:
        raise BadPrompt(f"{where}: the prompt is empty; fill it or remove the row", "empty prompt")
    if len(ids) > limit:
        why = (
            f"data.max_prompt_length={d.max_prompt_length}"
            if limit == d.max_prompt_length
            else f"the model's positions minus generation.max_new_tokens={config.generation.max_new_tokens}"
        )
        raise BadPrompt(
            f"{where}: the prompt has {len(ids)} tokens, more than {limit} ({why}); shorten it, raise "
            "data.max_prompt_length, or use a model with more positions",
            "prompt too long",
        )
    return Prompt(text, ids, columns, where)
