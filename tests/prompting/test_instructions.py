"""Instruction formats -> messages: each format's layout, ShareGPT role mapping, validation errors."""

from __future__ import annotations

import json

import pytest

from plmkit.errors import ConfigError, DataError
from plmkit.prompting.instructions import FORMATS, definition_prompt, to_messages, validate_messages

W = "train.jsonl:7"


def test_alpaca_joins_instruction_and_input():
    row = {"instruction": "Translate to French.", "input": "Good morning", "output": "Bonjour"}
    assert to_messages(row, "alpaca", W) == [
        {"role": "user", "content": "Translate to French.\n\nGood morning"},
        {"role": "assistant", "content": "Bonjour"},
    ]
    no_input = to_messages({"instruction": "Say hi.", "input": "  ", "output": "Hi"}, "alpaca", W)
    assert no_input[0] == {"role": "user", "content": "Say hi."}
    missing_input = to_messages({"instruction": "Say hi.", "output": "Hi"}, "alpaca", W)
    assert missing_input == no_input


def test_alpaca_system_and_history():
    row = {"instruction": "And 3+3?", "output": "6", "system": "Be brief.", "history": [["2+2?", "4"]]}
    assert [m["role"] for m in to_messages(row, "alpaca", W)] == [
        "system",
        "user",
        "assistant",
        "user",
        "assistant",
    ]
    with pytest.raises(DataError, match=r'train.jsonl:7: "history"\[0\] must be a \[user, assistant\] pair'):
        to_messages({**row, "history": [["only one"]]}, "alpaca", W)


def test_alpaca_missing_key_names_row_and_keys():
    with pytest.raises(
        DataError, match=r'train.jsonl:7: the row has no "output" \(did you mean "outputs"\?\)'
    ):
        to_messages({"instruction": "x", "outputs": "y"}, "alpaca", W)


def test_alpaca_real_rows(shared_data):
    for lang in ("en", "zh"):
        path = shared_data / "alpaca_bilingual" / f"alpaca_{lang}_first3k.jsonl"
        with path.open(encoding="utf-8") as f:
            rows = [json.loads(next(f)) for _ in range(50)]
        for i, row in enumerate(rows, 1):
            messages = to_messages(row, "alpaca", f"{path}:{i}")
            assert messages[-1] == {"role": "assistant", "content": row["output"]}
            user = row["instruction"] + ("\n\n" + row["input"] if row["input"].strip() else "")
            assert messages == [
                {"role": "user", "content": user},
                {"role": "assistant", "content": row["output"]},
            ]


def test_sharegpt_maps_roles_not_keys():
    row = {
        "system": "Be nice.",
        "conversations": [
            {"from": "human", "value": "hi"},
            {"from": "chatgpt", "value": "hello"},
            {"from": "user", "value": "and?"},
            {"from": "bing", "value": "bye"},
        ],
    }
    assert to_messages(row, "sharegpt", W) == [
        {"role": "system", "content": "Be nice."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "and?"},
        {"role": "assistant", "content": "bye"},
    ]


def test_sharegpt_tool_turns_need_a_role_map():
    row = {
        "conversations": [
            {"from": "human", "value": "weather?"},
            {"from": "function_call", "value": '{"name": "weather"}'},
            {"from": "observation", "value": "sunny"},
            {"from": "gpt", "value": "It is sunny."},
        ]
    }
    with pytest.raises(
        DataError, match=r'conversations\[1\] has an unknown speaker "function_call"; map it with role_map'
    ):
        to_messages(row, "sharegpt", W)
    mapped = to_messages(row, "sharegpt", W, role_map={"function_call": "assistant", "observation": "tool"})
    assert [m["role"] for m in mapped] == ["user", "assistant", "tool", "assistant"]
    with pytest.raises(DataError, match='unknown speaker "gtp" \\(did you mean "gpt"\\?\\)'):
        to_messages(
            {"conversations": [{"from": "human", "value": "a"}, {"from": "gtp", "value": "b"}]}, "sharegpt", W
        )


def test_sharegpt_preference_rows(shared_data):
    path = shared_data / "dpo_zh_demo" / "dpo_zh_demo.jsonl"
    with path.open(encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    with pytest.raises(DataError, match='ends with a "user" turn'):
        to_messages(rows[0], "sharegpt", f"{path}:1")  # the prompt alone: no answer to train on
    systems = 0
    for i, row in enumerate(rows, 1):
        messages = to_messages(row, "sharegpt", f"{path}:{i}", response="chosen")
        assert messages[-1] == {"role": "assistant", "content": row["chosen"]["value"]}
        systems += messages[0]["role"] == "system"
    assert systems == 64  # the README's count of rows with a system turn


def test_openai_and_prompt_completion():
    messages = [
        {"role": "system", "content": "s"},
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        {"role": "assistant", "content": "c"},
    ]
    assert to_messages({"messages": messages}, "openai", W)[1] == {"role": "user", "content": "ab"}
    assert to_messages({"prompt": "p", "completion": "c"}, "prompt_completion", W) == [
        {"role": "user", "content": "p"},
        {"role": "assistant", "content": "c"},
    ]
    conversational = {"prompt": messages[:2], "completion": [{"role": "assistant", "content": "c"}]}
    assert to_messages(conversational, "prompt_completion", W)[-1] == {"role": "assistant", "content": "c"}


def test_definition_layout():
    row = {
        "Definition": ["Answer with the sentiment of the review."],
        "Positive Examples": [
            {"input": "Great film!", "output": "positive", "explanation": "praise"},
            {"input": "Awful.", "output": "negative", "explanation": "complaint"},
        ],
        "Negative Examples": [{"input": "Fine.", "output": "maybe", "explanation": "not a label"}],
        "input": "Loved it.",
        "output": ["positive", "good"],
    }
    messages = to_messages(row, "definition", W, n_positive=1, explanations=True)
    assert messages[0]["content"] == (
        "Definition: Answer with the sentiment of the review.\n\n"
        "Positive Example 1 -\nInput: Great film!\nOutput: positive\nExplanation: praise\n\n"
        "Negative Example 1 -\nInput: Fine.\nOutput: maybe\nExplanation: not a label\n\n"
        "Now complete the following example -\nInput: Loved it.\nOutput:"
    )
    assert messages[1] == {"role": "assistant", "content": "positive"}  # the first reference output
    snake = {"definition": "D", "positive_examples": [], "input": "x", "output": "y"}
    assert to_messages(snake, "definition", W)[0]["content"] == definition_prompt("D", [], [], "x")
    assert (
        definition_prompt("D", [], [], "x")
        == "Definition: D\n\nNow complete the following example -\nInput: x\nOutput:"
    )


@pytest.mark.parametrize(
    "messages, match",
    [
        ([], "the conversation is empty"),
        ([{"role": "robot", "content": "x"}], 'turn 0 has an unknown role "robot"'),
        (
            [
                {"role": "user", "content": "q"},
                {"role": "assistant", "content": "a"},
                {"role": "assistant", "content": "b"},
            ],
            "turns 1 and 2 are both assistant turns",
        ),
        ([{"role": "user", "content": "q"}], 'the conversation ends with a "user" turn'),
        (
            [{"role": "user", "content": None}, {"role": "assistant", "content": "a"}],
            r"turn 0 \(user\) has no text content",
        ),
    ],
)
def test_validation_errors_name_the_row(messages, match):
    with pytest.raises(DataError, match=f"^{W}: {match}"):
        validate_messages(messages, W)


def test_validation_for_generation_allows_open_conversations():
    validate_messages([{"role": "user", "content": "q"}], W, for_training=False)
    assert to_messages(
        {"conversations": [{"from": "human", "value": "q"}]}, "sharegpt", W, for_training=False
    )


def test_format_and_option_errors():
    assert set(FORMATS) == {"alpaca", "sharegpt", "openai", "prompt_completion", "definition"}
    with pytest.raises(
        ConfigError, match='unknown instruction format "sharegtp" \\(did you mean "sharegpt"\\?\\)'
    ):
        to_messages({}, "sharegtp", W)
    with pytest.raises(ConfigError, match='format "alpaca" has no option "role_map"'):
        to_messages({"instruction": "a", "output": "b"}, "alpaca", W, role_map={})
    with pytest.raises(DataError, match="train.jsonl:7: a openai row must be a JSON object"):
        to_messages(["not", "a", "row"], "openai", W)
    with pytest.raises(DataError, match=r'"output" must be text, got int'):
        to_messages({"instruction": "a", "output": 3}, "alpaca", W)
