"""Supervised fine-tuning data: a conversation -> input_ids + labels with the loss mask; batches; packing.

    example = sft_example(tokenizer, template, messages, max_length=1024, where="train.jsonl:7")
    batch = collate_sft([example, ...], pad_id=tokenizer.pad_id)          # right padding, labels -100 there
    blocks = pack_examples(examples, block_size=2048, pad_id=tokenizer.pad_id)
    batch = collate_packed(blocks)   # + position_ids per document, a (B, T, T) block-diagonal causal mask

Labels are the input ids (CausalLM shifts them itself) where the assistant writes and -100 everywhere
else (system, user, role headers, padding). The assistant's text comes from the template:

- its `{% generation %}` blocks (transformers' return_assistant_tokens_mask): every token that overlaps a
  block is trained. The built-in templates put each turn's end-of-turn token (<|im_end|>, <|eot_id|>)
  inside the block, so the model learns to stop. A control token right after a block, outside it, is not
  trained: a warning says so (once per template and token).
- a template without `{% generation %}` (most templates on the Hub): each assistant message's content is
  located in the rendered text, in order, and the control token that directly follows it (its end of
  turn) joins the span.

When the last assistant span ends in no control token and none follows (a plain-text template), the
tokenizer's EOS is appended and trained, with the template text between that span and it. A row with no
trained token is a DataError saying why (template marks nothing / prompt fills max_length).

Truncation to `max_length` is from the right: the start of the conversation is kept, the end of a long
answer (and its end-of-turn token) is cut.

Padding is by position: `collate_sft` and `pack_examples` give -100 to the padded positions only, so a
tokenizer whose pad id is its eos id still trains its real EOS labels.

Packing concatenates whole examples (never split) into blocks of `block_size` in order (a new block when
the next example does not fit); `position_ids` restart at 0 for each example and `document_ids` number
them (-1 = padding). `packed_attention_mask` turns those into the (B, T, T) mask a model accepts as a
user attention_mask: causal within a document, nothing across documents. The first token of each
document carries no label, so the loss of a packed block is exactly the sum of its documents' losses.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from plmkit.errors import ConfigError, DataError
from plmkit.prompting.chat import ChatTemplate, special_token_variables

if TYPE_CHECKING:
    import torch

    from plmkit.tokenizer.base import Tokenizer

IGNORE = -100  # plmkit.model.losses.IGNORE: a label that carries no loss
_warned: set[tuple[str, str]] = set()


def _warn_once(key: tuple[str, str], message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, stacklevel=3)


def control_token_ids(tokenizer: Tokenizer) -> set[int]:
    """Ids of the special (control) tokens: the backend's special added tokens and the role tokens."""
    added = tokenizer.backend.get_added_tokens_decoder()
    ids = {i for i, token in added.items() if token.special}
    return ids | {i for i in tokenizer.all_special_ids if i is not None}


def token_mask(offsets: Sequence[tuple[int, int]], spans: Sequence[tuple[int, int]]) -> list[bool]:
    """Per token: does it overlap a character span? (transformers' assistant_masks rule; spans sorted)"""
    mask, s = [False] * len(offsets), 0
    for t, (start, end) in enumerate(offsets):
        while s < len(spans) and start >= spans[s][1]:
            s += 1
        if s == len(spans):
            break
        mask[t] = end > spans[s][0] and end > start
    return mask


def _find_assistant_spans(
    text: str, messages: Sequence[Mapping[str, Any]]
) -> tuple[list[tuple[int, int]], int | None]:
    """Templates without {% generation %}: each message's (stripped) content found in order.
    -> (assistant spans, index of an assistant message not found or None)."""
    spans, cursor = [], 0
    for i, message in enumerate(messages):
        raw = str(message.get("content") or "")
        content = raw.strip()
        if not content:
            continue
        start = text.find(content, cursor)
        if start < 0:
            if message.get("role") == "assistant":
                return spans, i
            continue  # a template may rewrite a system / user turn; keep looking after the last match
        end = start + len(content)
        # the whitespace around the content too, where the template kept it (it did not trim)
        lead, trail = raw[: len(raw) - len(raw.lstrip())], raw[len(raw.rstrip()) :]
        if lead and text[max(start - len(lead), cursor) : start] == lead:
            start -= len(lead)
        if trail and text.startswith(trail, end):
            end += len(trail)
        cursor = end
        if message.get("role") == "assistant":
            spans.append((start, end))
    return spans, None


def _runs(mask: Sequence[bool]) -> list[tuple[int, int]]:
    """[start, end) of each run of True."""
    runs, start = [], None
    for t, m in enumerate([*mask, False]):
        if m and start is None:
            start = t
        elif not m and start is not None:
            runs.append((start, t))
            start = None
    return runs


def check_template_tokens(tokenizer: Tokenizer, template: ChatTemplate) -> None:
    """ConfigError when a built-in template's control tokens are not single special tokens of the tokenizer
    (they would be split into pieces and the model could not stop on one token)."""
    added = {t.content for t in tokenizer.backend.get_added_tokens_decoder().values()}
    missing = [m for m in template.markers if m not in added]
    if missing:
        raise ConfigError(
            f'chat template "{template.name}" writes {", ".join(missing)} but the tokenizer has no such special '
            f"token; add them to special_tokens.additional (and resize the model's embeddings), or use a template "
            "whose control tokens the tokenizer has"
        )


_PROBE = "plmkit-end-of-turn-probe"  # an answer text no template rewrites


def end_of_turn_ids(tokenizer: Tokenizer, template: ChatTemplate) -> list[int]:
    """The tokens that end an assistant turn under `template`, for decoding to stop on: the control token
    the template writes right after an answer (ChatML's <|im_end|>, Llama 3's <|eot_id|>, the eos_token of
    a plain-text template), found by rendering a probe answer, then the tokenizer's eos (the token a
    template without one trains, see sft_example). Empty when the tokenizer has neither."""
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": _PROBE}]
    text = template.render(messages, **special_token_variables(tokenizer))
    end = text.rfind(_PROBE) + len(_PROBE)
    encoding = tokenizer.backend.encode(text, add_special_tokens=False)
    control = control_token_ids(tokenizer)
    found = []
    if end >= len(_PROBE):
        for token, (start, stop) in zip(encoding.ids, encoding.offsets):
            if start < end:
                continue
            if token in control:
                found.append(token)
            if token in control or text[start:stop].strip():  # whitespace may sit before the token
                break
    if tokenizer.eos_id is not None:
        found.append(tokenizer.eos_id)
    return list(dict.fromkeys(found))


def sft_example(
    tokenizer: Tokenizer,
    template: ChatTemplate,
    messages: Sequence[Mapping[str, Any]],
    max_length: int,
    where: str = "<row>",
) -> dict[str, list[int]]:
    """{"input_ids", "labels"} of one conversation (see the module docstring for the mask rules)."""
    if max_length < 2:
        raise ConfigError(f"max_length must be >= 2, got {max_length}")
    check_template_tokens(tokenizer, template)
    text, spans = template.render_with_spans(messages, **special_token_variables(tokenizer))
    if not template.has_generation_blocks:
        spans, missing = _find_assistant_spans(text, messages)
        if missing is not None:
            raise DataError(
                f"{where}: the chat template has no {{% generation %}} block and the text of assistant turn "
                f"{missing} is not in the rendered conversation, so nothing can be masked; wrap the assistant "
                "content and end-of-turn token in {% generation %}...{% endgeneration %}"
            )
    if not spans:
        how = (
            "its {% generation %} blocks marked no text"
            if template.has_generation_blocks
            else "it has no {% generation %} block and no assistant turn with text"
        )
        raise DataError(
            f"{where}: the chat template masks nothing for this conversation ({how}); give the row an assistant "
            "answer, or put {% generation %}...{% endgeneration %} around the assistant content in the template"
        )
    encoding = tokenizer.backend.encode(text, add_special_tokens=False)
    ids, mask = list(encoding.ids), token_mask(encoding.offsets, spans)
    control = control_token_ids(tokenizer)
    runs = _runs(mask)
    if not template.has_generation_blocks:  # the end-of-turn token right after a found answer joins it
        for _, end in runs:
            if end < len(ids) and ids[end] in control:
                mask[end] = True
        runs = _runs(mask)
    for k, (_, end) in enumerate(runs):
        if ids[end - 1] in control:
            continue
        stop = runs[k + 1][0] if k + 1 < len(runs) else len(ids)
        after = [i for i in ids[end:stop] if i in control]
        if after:
            token = tokenizer.id_to_token(after[0])
            _warn_once(
                (template.source, token),
                f"chat template {template.name or '(custom)'}: the end-of-turn token {token} follows the assistant "
                "text outside the trained span, so the model is not trained to end its turn; put it inside "
                "{% generation %}...{% endgeneration %} with the answer",
            )
        elif k == len(runs) - 1:  # a plain-text template leaves no end: append and train EOS
            if tokenizer.eos_id is None:
                raise ConfigError(
                    "the chat template ends the assistant turn with no control token and the tokenizer has no "
                    "eos token to append; set special_tokens.eos or use a template with an end-of-turn token"
                )
            ids.append(tokenizer.eos_id)
            mask[end:] = [True] * (len(ids) - end)
    labels = [i if m else IGNORE for i, m in zip(ids, mask)]
    ids, labels = ids[:max_length], labels[:max_length]
    if all(label == IGNORE for label in labels[1:]):  # label 0 is never predicted (nothing precedes it)
        raise DataError(
            f"{where}: the prompt fills max_length={max_length} ({len(encoding.ids)} tokens in all), leaving no "
            "answer token to train on; raise max_length or drop such long rows"
        )
    return {"input_ids": ids, "labels": labels}


# ---- batches ----------------------------------------------------------------------------------------
def collate_sft(
    examples: Sequence[Mapping[str, Sequence[int]]], pad_id: int | None, padding_side: str = "right"
) -> dict[str, torch.Tensor]:
    """Pad examples to the longest -> input_ids, labels, attention_mask (B, T); padded positions get
    label -100 by position, whatever their id (pad == eos keeps the real EOS labels)."""
    import torch

    if pad_id is None:
        raise ConfigError(
            "cannot pad: the tokenizer has no pad token; set special_tokens.pad (or use its eos)"
        )
    if padding_side not in ("right", "left"):
        raise ConfigError(f'padding_side must be "right" or "left", got "{padding_side}"')
    length = max(len(e["input_ids"]) for e in examples)
    shape = (len(examples), length)
    input_ids = torch.full(shape, pad_id, dtype=torch.long)
    labels = torch.full(shape, IGNORE, dtype=torch.long)
    attention_mask = torch.zeros(shape, dtype=torch.long)
    for row, e in enumerate(examples):
        n = len(e["input_ids"])
        cols = slice(0, n) if padding_side == "right" else slice(length - n, length)
        input_ids[row, cols] = torch.as_tensor(list(e["input_ids"]), dtype=torch.long)
        labels[row, cols] = torch.as_tensor(list(e["labels"]), dtype=torch.long)
        attention_mask[row, cols] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}


def pack_examples(
    examples: Sequence[Mapping[str, Sequence[int]]], block_size: int, pad_id: int = 0
) -> list[dict[str, list[int]]]:
    """Whole examples packed in order into blocks of exactly `block_size` tokens (padded at the end) ->
    [{"input_ids", "labels", "position_ids", "document_ids"}]; see the module docstring."""
    if block_size < 1:
        raise ConfigError(f"block_size must be >= 1, got {block_size}")
    blocks: list[dict[str, list[int]]] = []
    current: dict[str, list[int]] | None = None
    for index, e in enumerate(examples):
        n = len(e["input_ids"])
        if n > block_size:
            raise DataError(
                f"example {index} has {n} tokens, more than block_size={block_size}; set max_length <= block_size"
            )
        if current is None or len(current["input_ids"]) + n > block_size:
            current = {"input_ids": [], "labels": [], "position_ids": [], "document_ids": []}
            blocks.append(current)
        document = current["document_ids"][-1] + 1 if current["document_ids"] else 0
        current["input_ids"] += list(e["input_ids"])
        current["labels"] += [IGNORE, *list(e["labels"])[1:]]  # no label across the document boundary
        current["position_ids"] += list(range(n))
        current["document_ids"] += [document] * n
    for block in blocks:
        pad = block_size - len(block["input_ids"])
        block["input_ids"] += [pad_id] * pad
        block["labels"] += [IGNORE] * pad
        block["position_ids"] += list(range(pad))
        block["document_ids"] += [-1] * pad
    return blocks


def packed_attention_mask(document_ids: torch.Tensor) -> torch.Tensor:
    """(B, T) document ids -> (B, T, T) boolean: query i sees key j iff same document and j <= i."""
    import torch

    t = document_ids.shape[-1]
    same = document_ids[:, :, None] == document_ids[:, None, :]
    return same & torch.ones(t, t, dtype=torch.bool, device=document_ids.device).tril()


def collate_packed(blocks: Sequence[Mapping[str, Sequence[int]]]) -> dict[str, torch.Tensor]:
    """Packed blocks -> input_ids, labels, position_ids, document_ids (B, T) and attention_mask (B, T, T)."""
    import torch

    if not blocks:
        raise DataError("no packed blocks to collate: the dataset has no examples")
    batch = {key: torch.tensor([list(b[key]) for b in blocks], dtype=torch.long) for key in blocks[0]}
    batch["attention_mask"] = packed_attention_mask(batch["document_ids"])
    return batch
