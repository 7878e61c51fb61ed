"""Preference data: rows -> a prompt and its responses, best first -> token ids for a reward model or DPO.

    preference = preference_from_row(row.values, "hh", where=row.where)
    prompt, responses = render_preference(preference, template, tokenizer)     # texts
    example = encode_response(tokenizer, prompt, responses[0], max_length=512)   # {"input_ids", "labels"}
    batch = collate_responses([example, ...], pad_id)                           # (B, T) tensors

Row formats (`PREFERENCE_FORMATS`), read by plmkit.data.tasks.read_split under the recipe's column mapping:

    pairs     {"chosen", "rejected"} (+ "prompt", "margin"). Each side is a text, or a list of messages
              {"role", "content"} (TRL's conversational form). Without a prompt, message lists share their
              leading turns as the prompt (TRL's implicit prompt); plain texts without one are whole responses.
    hh        Anthropic HH-RLHF: "chosen" and "rejected" are "\\n\\nHuman: ...\\n\\nAssistant: ..." transcripts.
              Each is parsed into turns (a speaker's consecutive turns joined); the leading turns both
              share are the prompt, the rest (from an assistant turn) is the response.
    sharegpt  {"conversations": [{"from", "value"}, ...], "chosen": {"from": "gpt", "value"}, "rejected": ...}
              (+ "system"): LLaMA-Factory's preference rows (dpo_zh_demo), speakers mapped to roles as in
              plmkit.prompting.instructions (option role_map).
    ranked    {"ranked": [best, ..., worst]} (+ "prompt"): a K-way ranking (InstructGPT). A reward model
              trains on all C(K,2) pairs of it as one batch element.

A conversational preference is rendered by a chat template (plmkit.prompting.chat): the prompt with the
assistant's generation prompt, and each response as the text the full conversation adds after it (the
template must render the prompt as a prefix of the conversation). Without a template (a bidirectional
reward model), a conversation is written as an HH transcript ("\\n\\nHuman: ...\\n\\nAssistant: ...").

Tokens: a causal model reads prompt + response, encoded separately and joined (the boundary is exact),
labels on the response only (-100 on the prompt); plain-text responses end with the tokenizer's EOS. An
encoder reads the pair with the tokenizer's own template ([CLS] prompt [SEP] response [SEP]). Truncation:
the prompt keeps its last `max_prompt_length` tokens when that is set; the response is cut from the right to
fit `max_length`; a prompt that leaves no room for a response token is a `PromptTooLong` DataError.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from plmkit.errors import DataError
from plmkit.prompting.chat import ChatTemplate, special_token_variables
from plmkit.prompting.instructions import ROLES, to_messages, validate_messages

if TYPE_CHECKING:
    import torch

    from plmkit.tokenizer.base import Tokenizer

IGNORE = -100  # plmkit.model.losses.IGNORE: a label that carries no loss
PREFERENCE_FORMATS = ("pairs", "hh", "sharegpt", "ranked")
# the columns each format reads: (required, optional); `margin` is read only where a recipe uses it
FORMAT_COLUMNS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "pairs": (("chosen", "rejected"), ("prompt", "margin")),
    "hh": (("chosen", "rejected"), ("margin",)),
    "sharegpt": (("conversations", "chosen", "rejected"), ("system", "margin")),
    "ranked": (("ranked",), ("prompt",)),
}
HH_SPEAKERS = {"Human": "user", "Assistant": "assistant"}
TRANSCRIPT_NAMES = {"user": "Human", "assistant": "Assistant", "system": "System", "tool": "Tool"}
_HH_TURN = re.compile(r"\n\n(Human|Assistant):[ \t]?")

Message = dict[str, str]
Side = str | list[Message]  # a text, or a conversation


class PromptTooLong(DataError):
    """A prompt that leaves no room for any response token."""


@dataclass
class Preference:
    prompt: Side  # "" / [] when the responses stand alone
    responses: list[Side]  # best first: [chosen, rejected] for a pair
    where: str
    margin: float | None = None  # how much better chosen is than rejected (a pair's optional column)

    @property
    def conversational(self) -> bool:
        return isinstance(self.prompt, list)


# ---- rows -> preferences -----------------------------------------------------------------------------
def preference_from_row(
    values: Mapping[str, Any],
    format: str,
    where: str = "<row>",
    role_map: Mapping[str, str] | None = None,
) -> Preference:
    """The preference of one row in `format` (one of PREFERENCE_FORMATS); DataError naming `where`."""
    if format == "hh":
        chosen, rejected = (hh_messages(values[k], where, k) for k in ("chosen", "rejected"))
        prompt, responses = shared_prompt([chosen, rejected], where)
    elif format == "sharegpt":
        full = [
            to_messages(values, "sharegpt", where, response=k, role_map=role_map)
            for k in ("chosen", "rejected")
        ]
        prompt, responses = full[0][:-1], [[conversation[-1]] for conversation in full]
    elif format == "pairs":
        prompt, responses = _sides(values.get("prompt"), [values["chosen"], values["rejected"]], where)
    elif format == "ranked":
        ranked = values["ranked"]
        if not isinstance(ranked, list) or len(ranked) < 2:
            raise DataError(f'{where}: "ranked" must be a list of at least 2 responses, best first')
        prompt, responses = _sides(values.get("prompt"), list(ranked), where)
    else:
        raise DataError(f"unknown preference format {format!r}; known: {', '.join(PREFERENCE_FORMATS)}")
    for i, response in enumerate(responses):
        text = response if isinstance(response, str) else "".join(m["content"] for m in response)
        if not text.strip():
            name = f"ranked[{i}]" if format == "ranked" else ("chosen", "rejected")[i]
            raise DataError(f"{where}: the {name} response is empty; fill it or drop the row")
    return Preference(prompt, responses, where, _margin(values.get("margin"), where))


def hh_messages(text: Any, where: str, key: str = "chosen") -> list[Message]:
    """An HH-RLHF transcript "\\n\\nHuman: ...\\n\\nAssistant: ..." as messages; a speaker's consecutive
    turns are joined (the transcripts have a few "Assistant: ... Assistant: ..." runs)."""
    if not isinstance(text, str):
        raise DataError(f'{where}: "{key}" must be an HH transcript string, got {type(text).__name__}')
    pieces = _HH_TURN.split(text)
    if pieces[0].strip() or len(pieces) < 3:
        raise DataError(
            f'{where}: "{key}" is not an HH transcript ("\\n\\nHuman: ...\\n\\nAssistant: ..."); use '
            "data.format=pairs for plain chosen / rejected texts"
        )
    messages: list[Message] = []
    for speaker, content in zip(pieces[1::2], pieces[2::2]):
        role, content = HH_SPEAKERS[speaker], content.strip()
        if messages and messages[-1]["role"] == role:
            messages[-1]["content"] += "\n\n" + content
        else:
            messages.append({"role": role, "content": content})
    return messages


def shared_prompt(conversations: Sequence[list[Message]], where: str) -> tuple[list[Message], list[Side]]:
    """(the leading turns every conversation shares, each conversation's remaining turns). The prompt
    ends before an assistant turn, so every response starts with the assistant's answer."""
    n = 0
    shortest = min(len(c) for c in conversations)
    while n < shortest and all(c[n] == conversations[0][n] for c in conversations):
        n += 1
    if n == shortest and all(len(c) == n for c in conversations):  # identical: the last turn is the response
        n -= 1
    while n > 0 and not all(len(c) > n and c[n]["role"] == "assistant" for c in conversations):
        n -= 1
    if not all(c[n:] and c[n]["role"] == "assistant" for c in conversations):
        raise DataError(
            f"{where}: the responses do not start with an assistant turn after the shared prompt; each "
            "conversation must continue the same prompt with the assistant's answer"
        )
    for c in conversations:
        validate_messages(c, where)
    return conversations[0][:n], [c[n:] for c in conversations]


def _sides(prompt: Any, responses: list[Any], where: str) -> tuple[Side, list[Side]]:
    """pairs / ranked: texts stay texts; if any side is a conversation, every side becomes one."""
    if prompt is not None and not isinstance(prompt, (str, list, Mapping)):
        raise DataError(
            f'{where}: "prompt" must be a text or a list of messages, got {type(prompt).__name__}'
        )
    parsed = [_messages_or_text(r, where, f"response {i}") for i, r in enumerate(responses)]
    if prompt is None and all(isinstance(r, list) for r in parsed):
        return shared_prompt(parsed, where)  # the implicit prompt of conversational rows
    head = _messages_or_text(prompt, where, "prompt") if prompt is not None else ""
    if isinstance(head, str) and all(isinstance(r, str) for r in parsed):
        return head, parsed
    # a conversation somewhere: texts become a user turn (prompt) and assistant turns (responses)
    head = ([{"role": "user", "content": head}] if head else []) if isinstance(head, str) else head
    turns = [[{"role": "assistant", "content": r}] if isinstance(r, str) else r for r in parsed]
    for i, r in enumerate(turns):
        if r[0]["role"] != "assistant":
            raise DataError(
                f"{where}: response {i} starts with a {r[0]['role']} turn; it must be the assistant's"
            )
        validate_messages(head + r, where)
    return head, turns


def _messages_or_text(value: Any, where: str, what: str) -> Side:
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping):  # one message
        value = [value]
    if isinstance(value, list) and value and all(isinstance(m, Mapping) for m in value):
        messages = []
        for i, m in enumerate(value):
            if not isinstance(m.get("content"), str) or m.get("role") not in ROLES:
                raise DataError(
                    f'{where}: {what}[{i}] must be a message {{"role": one of {", ".join(ROLES)}, "content": text}}'
                )
            messages.append({"role": str(m["role"]), "content": m["content"]})
        return messages
    raise DataError(f"{where}: {what} must be a text or a list of messages, got {type(value).__name__}")


def _margin(value: Any, where: str) -> float | None:
    if value is None:
        return None
    try:
        margin = float(value)
    except (TypeError, ValueError):
        raise DataError(
            f"{where}: margin {value!r} is not a number; write it as a number or leave it out"
        ) from None
    if margin != margin or margin in (float("inf"), float("-inf")):
        raise DataError(f"{where}: margin {value!r} is not finite")
    return margin


# ---- preferences -> texts ----------------------------------------------------------------------------
def transcript(messages: Sequence[Mapping[str, str]]) -> str:
    """Messages as an HH transcript: "\\n\\nHuman: ...\\n\\nAssistant: ..." (system / tool turns named so)."""
    return "".join(f"\n\n{TRANSCRIPT_NAMES[m['role']]}: {m['content']}" for m in messages)


def render_preference(
    preference: Preference, template: ChatTemplate | None, tokenizer: Tokenizer | None = None
) -> tuple[str, list[str]]:
    """(prompt text, response texts): texts as they are; a conversation through `template` (None: an HH
    transcript), each response the text its conversation adds after the prompt's generation prompt."""
    if not preference.conversational:
        return str(preference.prompt), [str(r) for r in preference.responses]
    prompt = list(preference.prompt)
    if template is None:
        head = transcript(prompt) + "\n\nAssistant:"
        return head, [transcript(prompt + list(r))[len(head) :] for r in preference.responses]
    variables = special_token_variables(tokenizer) if tokenizer is not None else {}
    head = template.render(prompt, add_generation_prompt=True, **variables)
    texts = []
    for response in preference.responses:
        full = template.render(prompt + list(response), **variables)
        if not full.startswith(head):
            raise DataError(
                f"{preference.where}: chat template {template.name or '(custom)'} does not render the prompt "
                "(with its generation prompt) as the start of the conversation, so the response cannot be "
                "told apart; use a template whose assistant turn starts with its generation prompt"
            )
        texts.append(full[len(head) :])
    return head, texts


# ---- texts -> token ids ------------------------------------------------------------------------------
def encode_response(
    tokenizer: Tokenizer,
    prompt: str,
    response: str,
    *,
    max_length: int,
    max_prompt_length: int | None = None,
    causal: bool = True,
    append_eos: bool = False,
    bos: bool = False,
    where: str = "<row>",
) -> dict[str, list[int]]:
    """One sequence. causal: {"input_ids": prompt + response, "labels": -100 on the prompt, the response's
    ids after it} (`append_eos`: the tokenizer's EOS ends the response; `bos`: its BOS starts the prompt);
    else (an encoder): {"input_ids", "token_type_ids"} of the tokenizer's pair template."""
    backend = tokenizer.backend
    first = backend.encode(prompt, add_special_tokens=False) if prompt else None
    second = backend.encode(response, add_special_tokens=False)
    n_prompt = len(first.ids) if first is not None else 0
    if causal:
        prompt_ids = ([tokenizer.bos_id] if bos and tokenizer.bos_id is not None else []) + (
            list(first.ids) if first is not None else []
        )
        if max_prompt_length is not None:
            prompt_ids = prompt_ids[-max_prompt_length:]
        response_ids = list(second.ids) + (
            [tokenizer.eos_id] if append_eos and tokenizer.eos_id is not None else []
        )
        room = max_length - len(prompt_ids)
        _check_room(room, len(prompt_ids), max_length, max_prompt_length, where)
        response_ids = response_ids[:room]
        return {"input_ids": prompt_ids + response_ids, "labels": [IGNORE] * len(prompt_ids) + response_ids}
    special = backend.num_special_tokens_to_add(first is not None)
    if first is not None and max_prompt_length is not None and n_prompt > max_prompt_length:
        first.truncate(max_prompt_length, direction="left")  # keep the end of the conversation
        n_prompt = max_prompt_length
    room = max_length - special - n_prompt
    _check_room(room, n_prompt + special, max_length, max_prompt_length, where)
    second.truncate(room)
    encoding = backend.post_process(first, second) if first is not None else backend.post_process(second)
    return {"input_ids": list(encoding.ids), "token_type_ids": list(encoding.type_ids)}


def _check_room(room: int, used: int, max_length: int, max_prompt_length: int | None, where: str) -> None:
    if room >= 1:
        return
    keep = (
        "lower data.max_prompt_length"
        if max_prompt_length
        else "set data.max_prompt_length=N (the prompt keeps its last N tokens)"
    )
    raise PromptTooLong(
        f"{where}: the prompt takes {used} tokens, leaving no room for the response in data.max_length="
        f"{max_length}; raise data.max_length, {keep}, or set data.on_error=skip to skip and count such rows"
    )


# ---- batches -----------------------------------------------------------------------------------------
def collate_responses(
    examples: Sequence[Mapping[str, Sequence[int]]], pad_id: int
) -> dict[str, torch.Tensor]:
    """Right-pad sequences to the longest -> input_ids, attention_mask (B, T), and labels (-100 on the
    padding, by position) / token_type_ids (0 there) when the examples have them."""
    import torch

    length = max(len(e["input_ids"]) for e in examples)
    shape = (len(examples), length)
    batch = {"input_ids": torch.full(shape, pad_id, dtype=torch.long)}
    batch["attention_mask"] = torch.zeros(shape, dtype=torch.long)
    fills = {"labels": IGNORE, "token_type_ids": 0}
    for key, fill in fills.items():
        if key in examples[0]:
            batch[key] = torch.full(shape, fill, dtype=torch.long)
    for row, e in enumerate(examples):
        n = len(e["input_ids"])
        batch["attention_mask"][row, :n] = 1
        for key in ("input_ids", *fills):
            if key in batch:
                batch[key][row, :n] = torch.as_tensor(list(e[key]), dtype=torch.long)
    return batch
