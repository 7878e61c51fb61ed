"""The SFT recipe's inputs: its tokenizer, the causal LM (a plmkit or Hugging Face checkpoint, or a causal
preset initialised at random), the chat template, and the train / dev examples (rows -> conversations ->
input_ids + labels; packed blocks; padded batches)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from plmkit.data.sources import SkipReport
from plmkit.data.tasks import read_split
from plmkit.errors import ConfigError, DataError
from plmkit.model import ModelConfig, get_preset
from plmkit.model.registry import FAMILY_MODELS, model_class_name
from plmkit.prompting.chat import BUILTIN, ChatTemplate
from plmkit.prompting.instructions import to_messages
from plmkit.prompting.sft_data import collate_packed, collate_sft, pack_examples, sft_example
from plmkit.recipes.inputs import check_init_from, load_init_from, load_tokenizer_folder
from plmkit.recipes.sft_config import SftConfig
from plmkit.weights import unwrap

CAUSAL = "CausalLM"
Batch = dict[str, torch.Tensor]


def sft_tokenizer(config: SftConfig, resume_from: Path | None = None) -> Any:
    """tokenizer.path, else the base checkpoint's own, else (a resume) the checkpoint's."""
    if config.tokenizer.path:
        return load_tokenizer_folder(Path(config.tokenizer.path))
    if config.init_from:
        check_init_from(config)
        return load_tokenizer_folder(Path(config.init_from))
    if resume_from is not None:
        return load_tokenizer_folder(resume_from)
    raise ConfigError("no tokenizer: set tokenizer.path= or init_from=")


def build_causal_lm(
    config: SftConfig, tokenizer: Any, max_length: int | None = None, length_key: str = "data.max_length"
) -> tuple[torch.nn.Module, str]:
    """(the causal LM in train mode, where it came from). A base of another kind (an encoder, an
    encoder-decoder, a task head) is a ConfigError: SFT trains the LM head's next-token predictions.
    `max_length` (default data.max_length, named `length_key` in messages) must fit its positions; any
    recipe with init_from / model / tokenizer sections may build its causal LM here (GRPO does)."""
    max_length = config.data.max_length if max_length is None else max_length
    if config.init_from:
        model = load_init_from(config)
        source = f"init_from {config.init_from}"
        base = unwrap(getattr(model, "base_model", model))  # under a prompt / prefix-tuning wrapper
        if model_class_name(base) != CAUSAL:
            family = getattr(getattr(base, "config", None), "family", None)
            raise ConfigError(
                f"{source} holds a {model_class_name(base)}"
                + (f" ({family} family)" if family else "")
                + "; "
                "sft trains a causal LM (GPT, LLaMA, Qwen): set init_from= to a causal LM checkpoint, e.g. "
                "runs/gpt-clm/checkpoints/step-00002000 from plm pretrain recipes/gpt-clm.yaml"
            )
        if model.config.vocab_size < tokenizer.vocab_size:
            raise ConfigError(
                f"{source} has vocab_size {model.config.vocab_size} but the tokenizer has {tokenizer.vocab_size}; "
                "use the checkpoint's own tokenizer (leave tokenizer.path empty)"
            )
    else:
        fields = config.model.overrides()
        fields["vocab_size"] = fields.get("vocab_size", tokenizer.vocab_size)
        for role in ("pad", "bos", "eos"):
            fields.setdefault(f"{role}_token_id", getattr(tokenizer, f"{role}_id"))
        preset = get_preset(config.model.preset)
        fields.setdefault("max_positions", max(preset.max_positions, max_length))
        model_config: ModelConfig = preset.replace(**fields)
        source = f"model.preset={config.model.preset}"
        if model_config.family != "causal":
            raise ConfigError(
                f"{source} builds a {model_config.family} model; sft trains a causal LM: choose a causal preset "
                "(e.g. gpt2-tiny, llama-tiny) or set model.family=causal"
            )
        model = FAMILY_MODELS["causal"](model_config)
    check_max_length(max_length, length_key, model, source)
    return model.train(), source


def check_max_length(max_length: int, key: str, model: torch.nn.Module, source: str) -> None:
    """`key`=max_length fits the model's positions (ConfigError before any example is built)."""
    model_config = getattr(unwrap(getattr(model, "base_model", model)), "config", None)
    limit = getattr(model_config, "max_positions", None)
    position = getattr(model_config, "position", None)
    bounded = position in ("learned", "sinusoidal", "rotary")
    if limit is not None and bounded and max_length > limit:
        raise ConfigError(
            f"{key}={max_length} is longer than {source} can read (max_positions={limit}); "
            f"set {key} to {limit} or less"
        )


@dataclass
class SftSplit:
    name: str  # train / dev
    path: str
    examples: list[dict[str, list[int]]]  # {"input_ids", "labels"} per usable row
    skipped: SkipReport  # data.on_error=skip: rows not read, and rows with no usable conversation


# ---- the chat template --------------------------------------------------------------------------------
def sft_template(config: SftConfig, tokenizer: Any) -> ChatTemplate:
    """The recipe's template (see plmkit.recipes.sft_config): `resolve_chat_template(config.chat_template)`."""
    return resolve_chat_template(config.chat_template, tokenizer)


def resolve_chat_template(spec: str | None, tokenizer: Any) -> ChatTemplate:
    """A recipe's `chat_template` setting: the template it names, else (None) the tokenizer's own, else
    chatml when the tokenizer has its control tokens, else plain. Its control tokens must be single
    special tokens of the tokenizer, and "plain" needs an eos token. (sft, reward and dpo share it.)"""
    own = getattr(tokenizer, "chat_template", None)
    if spec is None and own:
        name = next((n for n, b in BUILTIN.items() if b.source == own), None)
        template = ChatTemplate(own, name=name)
    elif spec is None:
        template = ChatTemplate.builtin("chatml" if not _missing(tokenizer, "chatml") else "plain")
    else:
        template = ChatTemplate.resolve(str(spec))
    missing = _missing(tokenizer, template.name)
    if missing:
        raise ConfigError(
            f"chat_template {template.name}: the tokenizer has no special token {', '.join(missing)}; use "
            "chat_template=plain (answers end with the tokenizer's eos), a template whose control tokens the "
            "tokenizer has, or a tokenizer that has them (tokenizer.path=)"
        )
    if "eos_token" in template.source and tokenizer.eos_id is None:
        raise ConfigError(
            f"chat_template {template.name or '(custom)'} ends answers with eos_token but the tokenizer has no "
            "eos token; use a tokenizer with one (tokenizer.path=) or a template with its own end-of-turn token"
        )
    return template


def _missing(tokenizer: Any, builtin: str | None) -> list[str]:
    """The built-in template's control tokens that are not special tokens of the tokenizer."""
    if builtin not in BUILTIN:
        return []
    added = {t.content for t in tokenizer.backend.get_added_tokens_decoder().values()}
    return [m for m in BUILTIN[builtin].markers if m not in added]


# ---- data ---------------------------------------------------------------------------------------------
def read_sft_split(config: SftConfig, split: str, tokenizer: Any, template: ChatTemplate) -> SftSplit:
    """The examples of data.<split>: rows -> conversations -> input_ids + labels. A row whose conversation
    is unusable (unknown role, two assistant turns in a row, nothing to train) raises its DataError
    (file:line), or with data.on_error=skip is counted."""
    d = config.data
    required, optional = d.columns_read()
    rows = read_split(d.task_data(), split, required, optional)
    skipped, examples = rows.skipped, []
    for row in rows.rows:
        reason = "row that is not a usable conversation"
        try:
            messages = to_messages(row.values, d.format, where=row.where, **d.format_options)
            reason = "conversation with nothing to train"
            examples.append(sft_example(tokenizer, template, messages, d.max_length, where=row.where))
        except DataError as e:
            if d.on_error == "raise":
                raise DataError(f"{e} (or set data.on_error=skip to skip and count such rows)") from None
            skipped.add(reason, row.where)
    if not examples:
        raise DataError(
            f"data.{split} {rows.path} has no usable conversation ({skipped}); fix the rows, data.format "
            "or the chat template"
        )
    return SftSplit(split, rows.path, examples, skipped)


def pad_id(tokenizer: Any) -> int:
    """The id padding gets: pad, else eos (padded positions never carry a label, whatever their id)."""
    pad = tokenizer.pad_id if tokenizer.pad_id is not None else tokenizer.eos_id
    if pad is None:
        raise ConfigError("the tokenizer has neither a pad nor an eos token to pad batches with; add one")
    return pad


def train_items(config: SftConfig, examples: list[dict], pad: int) -> list[dict[str, list[int]]]:
    """The training items: the examples, or (pack: true) blocks of data.max_length tokens holding whole
    examples, packed in a seeded shuffled order so that a block mixes the file's rows."""
    if not config.pack:
        return examples
    order = list(range(len(examples)))
    random.Random(config.seed).shuffle(order)
    return pack_examples([examples[i] for i in order], config.data.max_length, pad)


def collate(config: SftConfig, items: list[dict], pad: int) -> Batch:
    if not config.pack:
        return collate_sft(items, pad)
    batch = collate_packed(items)
    batch.pop("document_ids")  # the mask and the positions carry the documents
    return batch


def dev_batches(config: SftConfig, split: SftSplit, pad: int) -> list[Batch]:
    """The dev examples in file order, padded per batch of train.batch_size, at most eval.batches."""
    size = config.train.batch_size
    starts = range(0, len(split.examples), size)
    return [collate_sft(split.examples[i : i + size], pad) for i in list(starts)[: config.eval.batches]]
