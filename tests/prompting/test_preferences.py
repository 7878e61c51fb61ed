"""Preference data: HH-RLHF transcripts, ShareGPT preference rows, plain / conversational pairs and K-way
rankings -> a prompt and responses; rendering through a chat template or as HH transcripts; tokens with
labels on the response (causal) or the encoder's pair template; truncation and the prompt-too-long error.
The real files (hh-rlhf harmless-base, the Chinese DPO demo) parse whole."""

from __future__ import annotations

import json

import pytest
import torch
from test_chat import chat_tokenizer

from plmkit.errors import DataError
from plmkit.prompting.chat import ChatTemplate
from plmkit.prompting.preferences import (
    IGNORE,
    PromptTooLong,
    collate_responses,
    encode_response,
    hh_messages,
    preference_from_row,
    render_preference,
    shared_prompt,
    transcript,
)

HH_CHOSEN = "\n\nHuman: hi there\n\nAssistant: hello!\n\nHuman: a joke?\n\nAssistant:  Why did the cat sit?"
HH_REJECTED = "\n\nHuman: hi there\n\nAssistant: hello!\n\nHuman: a joke?\n\nAssistant: No."


@pytest.fixture(scope="module")
def tok():
    return chat_tokenizer()


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


def test_hh_transcripts_split_into_the_shared_prompt_and_the_last_answers():
    p = preference_from_row({"chosen": HH_CHOSEN, "rejected": HH_REJECTED}, "hh", "f:1")
    assert p.prompt == [user("hi there"), assistant("hello!"), user("a joke?")]
    assert p.responses == [[assistant("Why did the cat sit?")], [assistant("No.")]]
    prompt, texts = render_preference(p, None)  # no template: back to an HH transcript
    assert (
        prompt + texts[0]
        == "\n\nHuman: hi there\n\nAssistant: hello!\n\nHuman: a joke?\n\nAssistant: Why did the cat sit?"
    )
    assert texts == [" Why did the cat sit?", " No."]


def test_hh_joins_a_speakers_consecutive_turns_and_keeps_differing_tails_whole():
    assert hh_messages("\n\nHuman: a\n\nAssistant: b\n\nAssistant: c", "f:1") == [
        user("a"),
        assistant("b\n\nc"),
    ]
    # the two transcripts part before their last exchange: the responses are several turns
    chosen = "\n\nHuman: q\n\nAssistant: a1\n\nHuman: more\n\nAssistant: a2"
    rejected = "\n\nHuman: q\n\nAssistant: b1"
    p = preference_from_row({"chosen": chosen, "rejected": rejected}, "hh", "f:1")
    assert p.prompt == [user("q")]
    assert p.responses == [[assistant("a1"), user("more"), assistant("a2")], [assistant("b1")]]


@pytest.mark.parametrize(
    "text, fix",
    [("Human: no newlines", "not an HH transcript"), ("\n\nHuman: a\n\nAssistant:", "response is empty")],
)
def test_bad_hh_rows_name_the_row(text, fix):
    with pytest.raises(DataError, match=f"f:7: .*{fix}"):
        preference_from_row({"chosen": text, "rejected": "\n\nHuman: a\n\nAssistant: b"}, "hh", "f:7")


def test_sharegpt_preference_rows():
    row = {
        "conversations": [{"from": "system", "value": "be brief"}, {"from": "human", "value": "你好"}],
        "chosen": {"from": "gpt", "value": "你好！"},
        "rejected": {"from": "gpt", "value": "走开"},
    }
    p = preference_from_row(row, "sharegpt", "f:1")
    assert p.prompt == [{"role": "system", "content": "be brief"}, user("你好")]
    assert p.responses == [[assistant("你好！")], [assistant("走开")]]


def test_pairs_plain_conversational_and_implicit_prompt():
    plain = preference_from_row(
        {"prompt": "Q:", "chosen": " yes", "rejected": " no", "margin": "0.5"}, "pairs", "f:1"
    )
    assert (plain.prompt, plain.responses, plain.margin, plain.conversational) == (
        "Q:",
        [" yes", " no"],
        0.5,
        False,
    )
    implicit = preference_from_row(
        {"chosen": [user("q"), assistant("yes")], "rejected": [user("q"), assistant("no")]}, "pairs", "f:1"
    )
    assert implicit.prompt == [user("q")] and implicit.responses == [[assistant("yes")], [assistant("no")]]
    mixed = preference_from_row(
        {"prompt": "q", "chosen": [assistant("yes")], "rejected": "no"}, "pairs", "f:1"
    )
    assert mixed.prompt == [user("q")] and mixed.responses == [[assistant("yes")], [assistant("no")]]
    with pytest.raises(DataError, match="f:2: margin 'big' is not a number"):
        preference_from_row({"chosen": "a", "rejected": "b", "margin": "big"}, "pairs", "f:2")
    with pytest.raises(DataError, match="f:3: response 0 must be a text or a list of messages"):
        preference_from_row({"chosen": 3, "rejected": "b"}, "pairs", "f:3")


def test_rankings():
    p = preference_from_row({"prompt": "q", "ranked": ["best", "middle", "worst"]}, "ranked", "f:1")
    assert p.responses == ["best", "middle", "worst"]
    with pytest.raises(DataError, match="at least 2 responses"):
        preference_from_row({"ranked": ["alone"]}, "ranked", "f:1")


def test_shared_prompt_ends_before_an_assistant_turn():
    a = [user("q"), assistant("x"), user("r"), assistant("y")]
    b = [user("q"), assistant("x"), user("s"), assistant("z")]
    prompt, responses = shared_prompt([a, b], "f:1")
    assert prompt == a[:1] and responses == [a[1:], b[1:]]  # the differing user turn is not a response start
    same_prompt, same = shared_prompt([a, a], "f:1")  # identical: the last answer is each response
    assert same_prompt == a[:3] and same == [a[3:], a[3:]]


def test_a_chat_template_renders_the_prompt_with_its_generation_prompt(tok):
    p = preference_from_row({"chosen": HH_CHOSEN, "rejected": HH_REJECTED}, "hh", "f:1")
    template = ChatTemplate.builtin("chatml")
    prompt, texts = render_preference(p, template, tok)
    assert prompt.endswith("<|im_start|>user\na joke?<|im_end|>\n<|im_start|>assistant\n")
    assert texts == ["Why did the cat sit?<|im_end|>\n", "No.<|im_end|>\n"]
    full = template.render(p.prompt + p.responses[1])
    assert prompt + texts[1] == full
    assert transcript([user("a"), assistant("b")]) == "\n\nHuman: a\n\nAssistant: b"


def test_causal_tokens_label_the_response_only(tok):
    out = encode_response(tok, "Q: hi", " yes there", max_length=64, append_eos=True, bos=True)
    prompt_ids = [tok.bos_id, *tok.encode("Q: hi")]
    response_ids = [*tok.encode(" yes there"), tok.eos_id]
    assert out["input_ids"] == prompt_ids + response_ids
    assert out["labels"] == [IGNORE] * len(prompt_ids) + response_ids
    cut = encode_response(
        tok, "Q: hi", " yes there", max_length=len(prompt_ids) + 2, append_eos=True, bos=True
    )
    assert cut["labels"][len(prompt_ids) :] == response_ids[:2]  # the response is cut from the right
    kept = encode_response(tok, "Q: hi", " yes", max_length=64, max_prompt_length=2)
    assert kept["input_ids"][:2] == tok.encode("Q: hi")[-2:]  # the prompt keeps its end
    with pytest.raises(PromptTooLong, match="f:9: the prompt takes .* data.max_prompt_length=N"):
        encode_response(tok, "Q: a long long prompt", " yes", max_length=3, where="f:9")


def test_encoder_tokens_are_the_tokenizers_pair(tmp_path):
    from finetune_helpers import save_base

    from plmkit.recipes.inputs import load_tokenizer_folder

    tokenizer = load_tokenizer_folder(save_base(tmp_path / "bert"))
    out = encode_response(tokenizer, "how was it", "good", max_length=32, causal=False)
    cls, sep = tokenizer.special_tokens.cls, tokenizer.special_tokens.sep
    ids = [tokenizer.token_to_id(cls), *tokenizer.encode("how was it"), tokenizer.token_to_id(sep)]
    ids += [*tokenizer.encode("good"), tokenizer.token_to_id(sep)]
    assert out["input_ids"] == ids
    assert out["token_type_ids"] == [0] * (len(tokenizer.encode("how was it")) + 2) + [1] * (
        len(tokenizer.encode("good")) + 1
    )
    short = encode_response(tokenizer, "how was it", "good", max_length=8, max_prompt_length=2, causal=False)
    assert short["input_ids"][1:3] == tokenizer.encode("how was it")[-2:] and len(short["input_ids"]) <= 8


def test_collate_pads_by_position():
    batch = collate_responses(
        [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8], "labels": [8]}], 0
    )
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["input_ids"].dtype == torch.long


def test_the_real_preference_files_parse(shared_data):
    hh = shared_data / "hh_rlhf_harmless_base" / "test.jsonl"
    empty = []
    for i, line in enumerate(hh.read_text(encoding="utf-8").splitlines(), 1):
        try:
            p = preference_from_row(json.loads(line), "hh", f"{hh}:{i}")
        except DataError as e:
            empty.append(i)
            assert "response is empty" in str(e)
            continue
        assert p.prompt[-1]["role"] == "user" and all(r[0]["role"] == "assistant" for r in p.responses)
    assert empty == [87, 517, 926, 1104]  # an empty chosen answer
    zh = shared_data / "dpo_zh_demo" / "dpo_zh_demo.jsonl"
    rows = [json.loads(line) for line in zh.read_text(encoding="utf-8").splitlines()]
    parsed = [preference_from_row(r, "sharegpt", f"{zh}:{i}") for i, r in enumerate(rows, 1)]
    assert len(parsed) == 300 and all(p.prompt[-1]["role"] == "user" for p in parsed)
