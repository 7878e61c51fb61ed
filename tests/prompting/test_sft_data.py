"""SFT data: the loss mask from chat templates, EOS handling, padding by position, truncation, and packing
whose loss equals the per-document losses."""

from __future__ import annotations

import pytest
import torch
from test_chat import CONVERSATIONS, chat_tokenizer

import tiny
from plmkit.errors import ConfigError, DataError
from plmkit.prompting import sft_data
from plmkit.prompting.chat import ChatTemplate
from plmkit.prompting.sft_data import (
    IGNORE,
    collate_packed,
    collate_sft,
    pack_examples,
    packed_attention_mask,
    sft_example,
)
from plmkit.tokenizer import SpecialTokens, Tokenizer

# ChatML as most Hub tokenizers store it: no {% generation %} blocks
HUB_CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# Meta's published Llama 3 Instruct template (no {% generation %}): it trims each content
HUB_LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
    "message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
PLAIN = (  # Alpaca-style plain text: no control token ends the answer
    "{% for m in messages %}{% if m['role'] == 'user' %}### Instruction:\n{{ m['content'] }}\n\n### Response:\n"
    "{% elif m['role'] == 'assistant' %}{% generation %}{{ m['content'] }}{% endgeneration %}{{ '\\n' }}{% endif %}{% endfor %}"
)
END_OUTSIDE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['role'] == 'assistant' %}"
    "{% generation %}{{ m['content'] }}{% endgeneration %}{% else %}{{ m['content'] }}{% endif %}<|im_end|>\n{% endfor %}"
)


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return chat_tokenizer()


def trained_text(tok, example) -> str:
    return tok.decode(
        [i for i, l in zip(example["input_ids"], example["labels"]) if l != IGNORE], skip_special_tokens=False
    )


def test_only_assistant_turns_carry_labels(tok):
    messages = CONVERSATIONS["system_multi"]
    example = sft_example(tok, ChatTemplate.builtin("chatml"), messages, max_length=512)
    ids, labels = example["input_ids"], example["labels"]
    assert len(ids) == len(labels)
    assert all(l in (IGNORE, i) for i, l in zip(ids, labels))
    assert (
        trained_text(tok, example)
        == messages[2]["content"] + "<|im_end|>" + messages[4]["content"] + "<|im_end|>"
    )
    # the prompt (system, user turns, role headers) is -100; the end-of-turn token is inside the mask
    prompt = tok.backend.encode(
        ChatTemplate.builtin("chatml").render(messages[:2], add_generation_prompt=True),
        add_special_tokens=False,
    ).ids
    assert ids[: len(prompt)] == prompt and set(labels[: len(prompt)]) == {IGNORE}
    im_end = tok.token_to_id("<|im_end|>")
    assert [l for l in labels if l == im_end] == [im_end, im_end]
    assert (
        ids[-1] == tok.token_to_id("\n") or tok.decode(ids[-1:]) == "\n"
    )  # no EOS appended after ChatML's end


@pytest.mark.parametrize("hub, builtin", [(HUB_CHATML, "chatml"), (HUB_LLAMA3, "llama3")])
def test_template_without_generation_blocks_masks_the_same(tok, hub, builtin):
    # the answers are found in the rendered text and their end-of-turn token joins them
    for name in ("single", "system_multi", "chinese_spaces"):
        messages = CONVERSATIONS[name]
        found = sft_example(tok, ChatTemplate(hub), messages, max_length=512)
        marked = sft_example(tok, ChatTemplate.builtin(builtin), messages, max_length=512)
        assert found == marked, name


def test_plain_template_gets_eos_appended_and_trained(tok):
    messages = CONVERSATIONS["single"]
    example = sft_example(tok, ChatTemplate(PLAIN), messages, max_length=512)
    assert example["input_ids"][-1] == tok.eos_id and example["labels"][-1] == tok.eos_id
    assert trained_text(tok, example) == "Paris.\n<|endoftext|>"  # the template's tail up to the EOS too
    hub_plain = ChatTemplate("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}")
    assert trained_text(tok, sft_example(tok, hub_plain, messages, max_length=512)) == "Paris.\n<|endoftext|>"


def test_pad_equal_to_eos_keeps_eos_labels(tok):
    same = chat_tokenizer(pad="<|endoftext|>")
    assert same.pad_id == same.eos_id
    short = sft_example(same, ChatTemplate(PLAIN), CONVERSATIONS["single"], max_length=512)
    long = sft_example(same, ChatTemplate(PLAIN), CONVERSATIONS["system_multi"], max_length=512)
    batch = collate_sft([short, long], pad_id=same.pad_id)
    n = len(short["input_ids"])
    assert batch["labels"][0, n - 1] == same.eos_id  # the real EOS is trained although pad uses its id
    assert (batch["input_ids"][0, n:] == same.eos_id).all() and (batch["labels"][0, n:] == IGNORE).all()
    assert batch["attention_mask"][0].tolist() == [1] * n + [0] * (batch["input_ids"].shape[1] - n)
    left = collate_sft([short, long], pad_id=same.pad_id, padding_side="left")
    assert left["labels"][0, -1] == same.eos_id and (left["labels"][0, :-n] == IGNORE).all()
    with pytest.raises(ConfigError, match="no pad token"):
        collate_sft([short], pad_id=None)


def test_empty_mask_errors_say_why(tok):
    rewrites = ChatTemplate(
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] | upper }}\n{% endfor %}"
    )
    with pytest.raises(
        DataError,
        match=r"row\.jsonl:3: the chat template has no \{% generation %\} block and the text of assistant turn 1",
    ):
        sft_example(tok, rewrites, CONVERSATIONS["single"], 512, where="row.jsonl:3")
    never = ChatTemplate(
        "{% for m in messages %}{% if m['role'] == 'bot' %}{% generation %}{{ m['content'] }}{% endgeneration %}"
        "{% else %}{{ m['content'] }}{% endif %}{% endfor %}"
    )
    with pytest.raises(
        DataError,
        match=r"row\.jsonl:3: the chat template masks nothing .*its \{% generation %\} blocks marked no text",
    ):
        sft_example(tok, never, CONVERSATIONS["single"], 512, where="row.jsonl:3")
    empty_answer = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "  "}]
    with pytest.raises(DataError, match="masks nothing .*no assistant turn with text"):
        sft_example(tok, ChatTemplate(HUB_CHATML), empty_answer, 512)


def test_end_of_turn_outside_generation_warns_once(tok, monkeypatch):
    monkeypatch.setattr(sft_data, "_warned", set())
    template = ChatTemplate(END_OUTSIDE)
    with pytest.warns(
        UserWarning, match=r"end-of-turn token <\|im_end\|> follows the assistant text outside"
    ) as record:
        first = sft_example(tok, template, CONVERSATIONS["system_multi"], 512)
        sft_example(tok, template, CONVERSATIONS["single"], 512)
    assert len(record) == 1
    assert (
        trained_text(tok, first)
        == CONVERSATIONS["system_multi"][2]["content"] + CONVERSATIONS["system_multi"][4]["content"]
    )
    assert first["input_ids"][-1] != tok.eos_id  # the template has its own end token: no EOS appended


def test_truncation_from_the_right(tok):
    messages = CONVERSATIONS["system_multi"]
    full = sft_example(tok, ChatTemplate.builtin("chatml"), messages, max_length=512)
    cut = sft_example(tok, ChatTemplate.builtin("chatml"), messages, max_length=60)
    assert cut["input_ids"] == full["input_ids"][:60] and cut["labels"] == full["labels"][:60]
    with pytest.raises(DataError, match=r"x:1: the prompt fills max_length=20 \(101 tokens in all\)"):
        sft_example(tok, ChatTemplate.builtin("chatml"), messages, max_length=20, where="x:1")


def test_builtin_template_needs_its_control_tokens():
    plain = Tokenizer.train(
        ["hello there general kenobi"] * 5,
        "bpe",
        vocab_size=300,
        special_tokens=SpecialTokens(eos="<|endoftext|>"),
    )
    with pytest.raises(
        ConfigError,
        match=r'chat template "chatml" writes <\|im_start\|>, <\|im_end\|> but the tokenizer has no such special token',
    ):
        sft_example(plain, ChatTemplate.builtin("chatml"), CONVERSATIONS["single"], 64)
    assert sft_example(plain, ChatTemplate(PLAIN), CONVERSATIONS["single"], 512)["labels"][-1] == plain.eos_id


# ---- packing ----------------------------------------------------------------------------------------------
QA = [
    ("2+2?", "4"),
    ("Capital of France?", "Paris."),
    ("Say hi.", "Hi there!"),
    ("今天天气?", "真好。"),
    ("Why?", "Because."),
]


def _examples(tok, template="chatml"):
    chat = ChatTemplate.builtin(template)
    return [
        sft_example(
            tok, chat, [{"role": "user", "content": q}, {"role": "assistant", "content": a}], max_length=40
        )
        for q, a in QA
    ]


def test_pack_examples_layout(tok):
    examples = _examples(tok)
    lengths = [len(e["input_ids"]) for e in examples]
    blocks = pack_examples(examples, block_size=64, pad_id=tok.pad_id)
    assert all(len(b[k]) == 64 for b in blocks for k in b)
    docs = [[d for d in b["document_ids"] if d >= 0] for b in blocks]
    assert sum(len(d) for d in docs) == sum(lengths)  # whole examples, none split or lost
    first = blocks[0]
    n0 = lengths[0]
    assert (
        first["position_ids"][:n0] == list(range(n0)) and first["position_ids"][n0] == 0
    )  # restart per document
    assert first["input_ids"][:n0] == examples[0]["input_ids"]
    assert first["labels"][n0] == IGNORE  # no label across the boundary
    pads = [i for i, d in enumerate(blocks[-1]["document_ids"]) if d < 0]
    assert all(blocks[-1]["labels"][i] == IGNORE and blocks[-1]["input_ids"][i] == tok.pad_id for i in pads)
    with pytest.raises(DataError, match="example 0 has .* more than block_size=8"):
        pack_examples(examples, block_size=8)


def test_packed_attention_mask_is_block_diagonal_causal():
    document_ids = torch.tensor([[0, 0, 1, 1, 1, -1]])
    mask = packed_attention_mask(document_ids)[0]
    expected = torch.tensor(
        [
            [1, 0, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 0],
            [0, 0, 1, 0, 0, 0],
            [0, 0, 1, 1, 0, 0],
            [0, 0, 1, 1, 1, 0],
            [0, 0, 0, 0, 0, 1],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(mask, expected)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])  # learned positions; rotary with grouped-query attention
def test_packed_loss_equals_per_document_losses(tok, arch):
    examples = _examples(tok, "llama3" if arch == "llama" else "chatml")
    overrides = {k: v for k, v in tiny.ARCHS[arch].items() if k != "family"}
    model = tiny.tiny_model("causal", vocab_size=tok.vocab_size, max_positions=64, **overrides)
    with torch.no_grad():
        per_doc_sum, per_doc_targets = 0.0, 0
        for e in examples:
            out = model(torch.tensor([e["input_ids"]]), labels=torch.tensor([e["labels"]]))
            per_doc_sum += float(out.loss_sum)
            per_doc_targets += int(out.targets)
        batch = collate_packed(pack_examples(examples, block_size=64, pad_id=tok.pad_id))
        assert batch["input_ids"].shape[0] < len(examples)  # several documents share a block
        assert batch["attention_mask"].shape == (batch["input_ids"].shape[0], 64, 64)
        out = model(
            batch["input_ids"],
            attention_mask=batch["attention_mask"],
            position_ids=batch["position_ids"],
            labels=batch["labels"],
        )
    assert int(out.targets) == per_doc_targets
    assert abs(float(out.loss_sum) / int(out.targets) - per_doc_sum / per_doc_targets) < 1e-5
    # without the block mask and position restart the documents would see each other: the loss differs
    with torch.no_grad():
        leaky = model(batch["input_ids"], labels=batch["labels"])
    assert abs(float(leaky.loss_sum) - float(out.loss_sum)) > 1e-3


@pytest.mark.parametrize(
    "template, end",
    [
        (ChatTemplate.builtin("chatml"), "<|im_end|>"),
        (ChatTemplate.builtin("llama3"), "<|eot_id|>"),
        (ChatTemplate(HUB_CHATML), "<|im_end|>"),
        (ChatTemplate(HUB_LLAMA3), "<|eot_id|>"),
        (ChatTemplate(END_OUTSIDE), "<|im_end|>"),  # outside the trained span (a warning in training)
        (ChatTemplate.builtin("plain"), None),  # the eos_token it writes after the answer
        (ChatTemplate(PLAIN), None),  # nothing ends the answer: the eos sft_example appends
    ],
)
def test_end_of_turn_ids_are_the_control_token_after_an_answer_then_eos(tok, template, end):
    ids = sft_data.end_of_turn_ids(tok, template)
    expected = ([tok.token_to_id(end)] if end else []) + [tok.eos_id]
    assert ids == expected
    if template.source == END_OUTSIDE:
        return
    # the first one is what supervised fine-tuning trains the model to end its answer with
    example = sft_example(tok, template, CONVERSATIONS["single"], max_length=512)
    trained = [i for i, label in zip(example["input_ids"], example["labels"]) if label != IGNORE]
    assert trained[-1] == ids[0]
