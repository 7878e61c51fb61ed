"""Instruction-data formats -> conversations: a list of messages {"role", "content"}.

    messages = to_messages(row, "alpaca", where="data/train.jsonl:12")

Formats (`FORMATS`), each a JSON row:

    alpaca             {"instruction", "input", "output"} (+ optional "system", "history": [[user, assistant], ...]).
                       The user turn is the instruction, followed by "\\n\\n" and the input when the input is
                       non-empty; the output is the assistant turn. History pairs come first, in order.
    sharegpt           {"conversations": [{"from", "value"}, ...]} (+ optional "system"). Speakers are MAPPED
                       to roles: human/user -> user, gpt/assistant/chatgpt/bing -> assistant, system -> system.
                       function_call / observation (tool use) are an error unless `role_map` maps them, e.g.
                       {"function_call": "assistant", "observation": "tool"}. `response="chosen"` appends a
                       row's {"from", "value"} answer (preference data such as dpo_zh_demo).
    openai             {"messages": [{"role", "content"}, ...]}; content may be a list of {"type": "text",
                       "text"} parts (joined).
    prompt_completion  {"prompt", "completion"}: one user and one assistant turn (either may also be a list
                       of messages, TRL's conversational form).
    definition         Super-NaturalInstructions: {"definition", "positive_examples", "negative_examples",
                       "input", "output"} (the task files' "Definition", "Positive Examples", ... spellings
                       too). One user turn laid out as (`definition_prompt`):

                           Definition: <definition>

                           Positive Example 1 -
                           Input: <input>
                           Output: <output>
                           [Explanation: <explanation>]

                           Negative Example 1 -
                           ...

                           Now complete the following example -
                           Input: <input>
                           Output:

                       and the output as the assistant turn (a list of reference outputs: the first).

Every conversation is validated (`validate_messages`): a DataError naming the row's `where` for an empty
conversation, an unknown role, two assistant turns in a row, non-text content, and (for training) a
conversation that does not end with an assistant turn.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from plmkit.errors import ConfigError, DataError, did_you_mean

ROLES = ("system", "user", "assistant", "tool")
SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bing": "assistant",
    "system": "system",
}
TOOL_SPEAKERS = ("function_call", "observation")  # need an explicit role_map entry

Message = dict[str, str]


def _field(row: Mapping[str, Any], key: str, where: str, *, required: bool = True, default: Any = "") -> Any:
    if key in row and row[key] is not None:
        return row[key]
    if required:
        present = ", ".join(map(str, row)) or "none"
        raise DataError(
            f'{where}: the row has no "{key}"{did_you_mean(key, map(str, row))} (keys: {present})'
        )
    return default


def _text(value: Any, where: str, what: str) -> str:
    """A message content as text: a string, or a list of {"type": "text", "text"} parts."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(
        isinstance(p, Mapping) and isinstance(p.get("text"), str) for p in value
    ):
        return "".join(p["text"] for p in value)
    raise DataError(f"{where}: {what} must be text, got {type(value).__name__}; write it as a JSON string")


# ---- the formats ------------------------------------------------------------------------------------
def alpaca_messages(row: Mapping[str, Any], where: str) -> list[Message]:
    instruction = _text(_field(row, "instruction", where), where, '"instruction"')
    extra = _text(_field(row, "input", where, required=False), where, '"input"')
    output = _text(_field(row, "output", where), where, '"output"')
    messages: list[Message] = []
    system = _field(row, "system", where, required=False)
    if system:
        messages.append({"role": "system", "content": _text(system, where, '"system"')})
    history = _field(row, "history", where, required=False, default=[])
    for i, pair in enumerate(history):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
            raise DataError(f'{where}: "history"[{i}] must be a [user, assistant] pair')
        messages.append({"role": "user", "content": _text(pair[0], where, f'"history"[{i}][0]')})
        messages.append({"role": "assistant", "content": _text(pair[1], where, f'"history"[{i}][1]')})
    user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    messages.append({"role": "user", "content": user})
    messages.append({"role": "assistant", "content": output})
    return messages


def sharegpt_messages(
    row: Mapping[str, Any],
    where: str,
    role_map: Mapping[str, str] | None = None,
    response: str | None = None,
) -> list[Message]:
    turns = _field(row, "conversations", where)
    if not isinstance(turns, list):
        raise DataError(f'{where}: "conversations" must be a list of {{"from", "value"}}')
    if response is not None:
        turns = [*turns, _field(row, response, where)]
    speakers = {**SHAREGPT_ROLES, **(role_map or {})}
    messages: list[Message] = []
    system = _field(row, "system", where, required=False)
    if system:
        messages.append({"role": "system", "content": _text(system, where, '"system"')})
    for i, turn in enumerate(turns):
        if not isinstance(turn, Mapping) or "from" not in turn or "value" not in turn:
            raise DataError(f'{where}: conversations[{i}] must be an object {{"from", "value"}}')
        speaker = str(turn["from"])
        if speaker not in speakers:
            hint = (
                f'; map it with role_map={{"{speaker}": ...}} (e.g. function_call -> assistant, observation -> tool)'
                if speaker in TOOL_SPEAKERS
                else f"{did_you_mean(speaker, speakers)}; known: {', '.join(speakers)} (or map it with role_map)"
            )
            raise DataError(f'{where}: conversations[{i}] has an unknown speaker "{speaker}"{hint}')
        messages.append(
            {"role": speakers[speaker], "content": _text(turn["value"], where, f"conversations[{i}].value")}
        )
    return messages


def openai_messages(row: Mapping[str, Any], where: str) -> list[Message]:
    return _message_list(_field(row, "messages", where), where, '"messages"')


def _message_list(value: Any, where: str, what: str) -> list[Message]:
    if not isinstance(value, list):
        raise DataError(f'{where}: {what} must be a list of {{"role", "content"}}')
    messages = []
    for i, m in enumerate(value):
        if not isinstance(m, Mapping) or "role" not in m or "content" not in m:
            raise DataError(f'{where}: {what}[{i}] must be an object {{"role", "content"}}')
        messages.append(
            {"role": str(m["role"]), "content": _text(m["content"], where, f"{what}[{i}].content")}
        )
    return messages


def prompt_completion_messages(row: Mapping[str, Any], where: str) -> list[Message]:
    prompt, completion = _field(row, "prompt", where), _field(row, "completion", where)
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], Mapping):
        head = _message_list(prompt, where, '"prompt"')
    else:
        head = [{"role": "user", "content": _text(prompt, where, '"prompt"')}]
    if isinstance(completion, list) and completion and isinstance(completion[0], Mapping):
        return head + _message_list(completion, where, '"completion"')
    return head + [{"role": "assistant", "content": _text(completion, where, '"completion"')}]


_DEFINITION_KEYS = {  # our key: the Super-NaturalInstructions task-file spelling
    "definition": "Definition",
    "positive_examples": "Positive Examples",
    "negative_examples": "Negative Examples",
}


def definition_prompt(
    definition: str,
    positive: list[Mapping[str, Any]],
    negative: list[Mapping[str, Any]],
    input_text: str,
    explanations: bool = False,
) -> str:
    """The user turn of the "definition" format (layout in the module docstring)."""
    parts = [f"Definition: {definition}"]
    for label, examples in (("Positive", positive), ("Negative", negative)):
        for i, ex in enumerate(examples, 1):
            block = f"{label} Example {i} -\nInput: {ex.get('input', '')}\nOutput: {ex.get('output', '')}"
            if explanations and ex.get("explanation"):
                block += f"\nExplanation: {ex['explanation']}"
            parts.append(block)
    parts.append(f"Now complete the following example -\nInput: {input_text}\nOutput:")
    return "\n\n".join(parts)


def definition_messages(
    row: Mapping[str, Any],
    where: str,
    n_positive: int | None = None,
    n_negative: int | None = None,
    explanations: bool = False,
) -> list[Message]:
    """Super-NaturalInstructions rows; `n_positive` / `n_negative` keep the first N examples (None: all)."""
    get = {k: row.get(k, row.get(alt)) for k, alt in _DEFINITION_KEYS.items()}
    if get["definition"] is None:
        _field(row, "definition", where)  # raises, naming the keys the row has
    definition = get["definition"]
    if isinstance(definition, list):  # the task files store it as a one-element list
        definition = "\n".join(_text(d, where, '"definition"') for d in definition)
    definition = _text(definition, where, '"definition"')
    examples = {}
    for key, n in (("positive_examples", n_positive), ("negative_examples", n_negative)):
        value = get[key] or []
        if not isinstance(value, list) or not all(isinstance(e, Mapping) for e in value):
            raise DataError(f'{where}: "{key}" must be a list of {{"input", "output", "explanation"}}')
        examples[key] = value if n is None else value[:n]
    output = _field(row, "output", where)
    if isinstance(output, list):  # several reference outputs: train on the first
        if not output:
            raise DataError(f'{where}: "output" is an empty list; give at least one reference output')
        output = output[0]
    user = definition_prompt(
        definition,
        examples["positive_examples"],
        examples["negative_examples"],
        _text(_field(row, "input", where), where, '"input"'),
        explanations,
    )
    return [
        {"role": "user", "content": user},
        {"role": "assistant", "content": _text(output, where, '"output"')},
    ]


FORMATS: dict[str, Callable[..., list[Message]]] = {
    "alpaca": alpaca_messages,
    "sharegpt": sharegpt_messages,
    "openai": openai_messages,
    "prompt_completion": prompt_completion_messages,
    "definition": definition_messages,
}


def to_messages(
    row: Mapping[str, Any], format: str, where: str = "<row>", for_training: bool = True, **options: Any
) -> list[Message]:
    """The validated conversation of one row in `format` (one of FORMATS); `options` go to the format's
    function (sharegpt: role_map, response; definition: n_positive, n_negative, explanations)."""
    if format not in FORMATS:
        raise ConfigError(
            f'unknown instruction format "{format}"{did_you_mean(format, FORMATS)}; known: {", ".join(FORMATS)}'
        )
    if not isinstance(row, Mapping):
        raise DataError(f"{where}: a {format} row must be a JSON object, got {type(row).__name__}")
    function = FORMATS[format]
    accepted = [p for p in inspect.signature(function).parameters if p not in ("row", "where")]
    for key in options:
        if key not in accepted:
            raise ConfigError(
                f'instruction format "{format}" has no option "{key}"{did_you_mean(key, accepted)}; '
                f"its options: {', '.join(accepted) or 'none'}"
            )
    messages = function(row, where, **options)
    validate_messages(messages, where, for_training=for_training)
    return messages


def validate_messages(messages: list[Mapping[str, Any]], where: str, for_training: bool = True) -> None:
    """DataError (naming `where` and the turn) unless the conversation is usable."""
    if not messages:
        raise DataError(f"{where}: the conversation is empty; give at least a user and an assistant turn")
    previous = None
    for i, m in enumerate(messages):
        role = m.get("role")
        if role not in ROLES:
            raise DataError(
                f'{where}: turn {i} has an unknown role "{role}"{did_you_mean(str(role), ROLES)}; roles: {", ".join(ROLES)}'
            )
        if not isinstance(m.get("content"), str):
            raise DataError(f"{where}: turn {i} ({role}) has no text content")
        if role == "assistant" and previous == "assistant":
            raise DataError(
                f"{where}: turns {i - 1} and {i} are both assistant turns; merge them or put a user turn between"
            )
        previous = role
    if for_training and previous != "assistant":
        raise DataError(
            f'{where}: the conversation ends with a "{previous}" turn; for training it must end with the assistant\'s answer'
        )
