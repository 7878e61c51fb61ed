"""CLM, MLM, span masking and prefix LM objectives: the lecture tables, masking statistics, models."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer as Backend
from tokenizers import models

from plmkit.data.objectives import build_objective
from plmkit.data.objectives.mlm import mask_tokens
from plmkit.data.objectives.span import mean_span_length
from plmkit.errors import ConfigError, DataError
from plmkit.model import ModelConfig, build_model
from plmkit.tokenizer import SpecialTokens, Tokenizer
from zh_tokenizer import LECTURE, zh_char_tokenizer

MINE = ["clm", "mlm", "wwm", "spell", "span", "prefix_lm"]


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return zh_char_tokenizer()


def chars(tok: Tokenizer, ids) -> list[str]:
    return [tok.id_to_token(int(i)) if i >= 0 else "-" for i in ids]


def random_corpus(tok: Tokenizer, rows: int, length: int, seed: int = 0) -> list[list[int]]:
    """[CLS] + random non-special tokens + [SEP], rows x length tokens in all."""
    g = torch.Generator().manual_seed(seed)
    body = torch.randint(5, tok.vocab_size, (rows, length - 2), generator=g)  # ids 0..4 are the specials
    return [[tok.cls_id, *row, tok.sep_id] for row in body.tolist()]


# ---- CLM -----------------------------------------------------------------------------------------
def test_clm_lecture_table_labels_are_inputs_except_padding(tok):
    batch = build_objective("clm", tok)([tok.encode(LECTURE), tok.encode("我们一起出去玩吧")])
    assert chars(tok, batch["input_ids"][1]) == list("我们一起出去玩吧") + ["[PAD]"] * 7
    assert chars(tok, batch["labels"][0]) == list(LECTURE)
    assert chars(tok, batch["labels"][1]) == list("我们一起出去玩吧") + ["-"] * 7
    assert batch["attention_mask"].tolist() == [[1] * 15, [1] * 8 + [0] * 7]


def test_clm_eos_sharing_the_pad_id_keeps_its_label():
    backend = Backend(models.WordLevel({"<eos>": 0, "a": 1, "b": 2, "<unk>": 3}, unk_token="<unk>"))
    gpt_like = Tokenizer(backend, SpecialTokens(eos="<eos>", pad="<eos>", unk="<unk>"))
    assert gpt_like.pad_id == gpt_like.eos_id == 0
    batch = build_objective("clm", gpt_like)([[1, 2, 0], [1, 0]])
    assert batch["input_ids"].tolist() == [[1, 2, 0], [1, 0, 0]]
    assert batch["labels"].tolist() == [[1, 2, 0], [1, 0, -100]]  # the EOS in row 2 carries loss


# ---- MLM -----------------------------------------------------------------------------------------
def test_mlm_lecture_table_labels_only_at_masked_positions(tok):
    mlm = build_objective("mlm", tok, mask_replace_prob=1.0, random_replace_prob=0.0)
    batch = mlm([{"input_ids": tok.encode(LECTURE, add_special_tokens=True), "selected": [2, 4, 10]}])
    expected_inputs = [
        "[CLS]",
        "今",
        "[MASK]",
        "天",
        "[MASK]",
        *"真好，我们",
        "[MASK]",
        *"起出去玩吧",
        "[SEP]",
    ]
    expected_labels = ["-", "-", "天", "-", "气", "-", "-", "-", "-", "-", "一", "-", "-", "-", "-", "-", "-"]
    assert chars(tok, batch["input_ids"][0]) == expected_inputs
    assert chars(tok, batch["labels"][0]) == expected_labels


def test_mlm_seeded_batch_structure(tok):
    ids = tok.encode(LECTURE * 4, add_special_tokens=True)
    batch = build_objective("mlm", tok, seed=3, mlm_probability=0.4)([ids, ids[:20]])
    original = build_objective("clm", tok)([ids, ids[:20]])["input_ids"]
    selected = batch["labels"] != -100
    assert selected.any()
    assert torch.equal(batch["labels"][selected], original[selected])  # labels: the original tokens
    assert torch.equal(batch["input_ids"][~selected], original[~selected])  # others untouched
    assert not selected[:, 0].any() and not selected[0, -1].any() and not selected[1, 20:].any()


@pytest.mark.parametrize("rate", [0.15, 0.4])
def test_mlm_statistics_over_100k_tokens(tok, rate):
    corpus = random_corpus(tok, 200, 512)
    batch = build_objective("mlm", tok, seed=0, mlm_probability=rate)(corpus)
    original = torch.tensor(corpus)
    selected = batch["labels"] != -100
    maskable = original.numel() - 2 * len(corpus)
    assert maskable >= 100_000
    assert abs(selected.sum().item() / maskable - rate) < 0.005
    assert not selected[:, 0].any() and not selected[:, -1].any()  # [CLS], [SEP] never selected
    inputs = batch["input_ids"][selected]
    masked = (inputs == tok.mask_id).float().mean().item()
    unchanged = (inputs == original[selected]).float().mean().item()
    assert (
        abs(masked - 0.8) < 0.015
        and abs(unchanged - 0.1) < 0.015
        and abs(1 - masked - unchanged - 0.1) < 0.015
    )
    replaced = inputs[(inputs != tok.mask_id) & (inputs != original[selected])]
    assert not torch.isin(replaced, torch.tensor(tok.all_special_ids)).any()  # random ids are never special


def test_mask_tokens_groups_share_one_decision(tok):
    ids = torch.tensor(random_corpus(tok, 100, 64))
    groups = torch.full_like(ids, -1)
    groups[:, 1:61] = torch.arange(60)[None, :] // 4  # groups of 4 consecutive tokens
    g = torch.Generator().manual_seed(0)
    inputs, labels = mask_tokens(ids, groups >= 0, tok, g, groups=groups)
    is_mask = (inputs[:, 1:61] == tok.mask_id).reshape(100, 15, 4)
    assert (is_mask.all(-1) | ~is_mask.any(-1)).all()  # a group is all [MASK] or has none
    assert abs(is_mask[..., 0].float().mean().item() - 0.8) < 0.05
    assert torch.equal(labels[groups >= 0], ids[groups >= 0]) and (labels[groups < 0] == -100).all()


# ---- span masking (SpanBERT) ---------------------------------------------------------------------
def test_span_statistics_rate_and_mean_length(tok):
    corpus = random_corpus(tok, 200, 512)
    batch = build_objective("span", tok, seed=0)(corpus)
    selected = batch["labels"] != -100
    assert abs(selected.sum().item() / (200 * 510) - 0.15) < 0.005
    assert not selected[:, 0].any() and not selected[:, -1].any()

    span = build_objective("span", tok, seed=1)
    lengths = [len(s) for _ in range(1500) for s in span.select_spans([[i] for i in range(510)], 77)]
    assert sum(lengths) >= 100_000
    p, cap = 0.2, 10  # expected value of Geo(0.2) truncated to 1..10 and renormalised: 3.797
    expected = sum(k * p * (1 - p) ** (k - 1) for k in range(1, cap + 1)) / (1 - (1 - p) ** cap)
    assert expected == pytest.approx(mean_span_length(p, cap))
    assert abs(sum(lengths) / len(lengths) - expected) < 0.3
    assert max(lengths) <= cap


def test_span_covers_whole_wordpiece_words(tok):
    text = "hello unbelievable playing the cat walked " * 8
    ids = tok.encode(text, add_special_tokens=True)
    tokens = chars(tok, ids)
    span = build_objective("span", tok, mlm_probability=0.4)
    for _ in range(20):
        selected = (span([ids])["labels"][0] != -100).tolist()
        for i in range(1, len(ids)):
            if tokens[i].startswith("##"):
                assert selected[i] == selected[i - 1], (tokens, selected)


# ---- prefix LM -----------------------------------------------------------------------------------
def test_prefix_lm_explicit_source_target_table(tok):
    source, target = tok.encode("今天天气"), tok.encode("真好，我们")
    batch = build_objective("prefix_lm", tok)(
        [{"source": source, "target": target}, {"source": source[:2], "target": target[:1]}]
    )
    assert batch["prefix_lengths"].tolist() == [4, 2]
    assert batch["token_type_ids"].tolist() == [[0, 0, 0, 0, 1, 1, 1, 1, 1], [0, 0, 1, 0, 0, 0, 0, 0, 0]]
    assert chars(tok, batch["labels"][0]) == ["-", "-", "-", "真", "好", "，", "我", "们", "-"]
    assert chars(tok, batch["labels"][1]) == ["-", "真", "-", "-", "-", "-", "-", "-", "-"]
    assert batch["attention_mask"].tolist()[1] == [1, 1, 1, 0, 0, 0, 0, 0, 0]


def test_prefix_lm_random_split_and_eos(tok):
    ids = tok.encode(LECTURE * 2)  # 30 tokens
    prefix = build_objective("prefix_lm", tok, min_source_fraction=0.3, max_source_fraction=0.6)
    splits = [int(prefix([ids])["prefix_lengths"][0]) for _ in range(300)]
    assert min(splits) >= 9 and max(splits) <= 18 and len(set(splits)) >= 8
    with pytest.raises(ConfigError, match="eos"):
        build_objective("prefix_lm", tok, append_eos=True)  # the char tokenizer has no eos
    with pytest.raises(ConfigError, match="min_source_fraction"):
        build_objective("prefix_lm", tok, min_source_fraction=0.9, max_source_fraction=0.5)


def test_prefix_lm_source_logits_ignore_the_target(tok):
    torch.manual_seed(0)
    model = build_model(tiny_config("prefix", tok)).eval()
    batch = build_objective("prefix_lm", tok)([tok.encode(LECTURE), tok.encode("我们一起出去玩吧")])
    s = int(batch["prefix_lengths"][0])
    changed = {**batch, "input_ids": batch["input_ids"].clone()}
    changed["input_ids"][0, s + 2] = tok.token_to_id("猫")
    with torch.no_grad():
        out, out2 = model(**batch, compute_logits=True), model(**changed, compute_logits=True)
    assert math.isfinite(out.loss.item())
    assert torch.allclose(
        out.logits[0, : s + 2], out2.logits[0, : s + 2], atol=1e-6
    )  # source + earlier target
    assert not torch.allclose(out.logits[0, s + 2 :], out2.logits[0, s + 2 :])
    assert torch.equal(out.logits[1], out2.logits[1])


# ---- shared: models, resume, errors ------------------------------------------------------------
def tiny_config(family: str, tok: Tokenizer) -> ModelConfig:
    return ModelConfig(
        family=family, vocab_size=tok.vocab_size, d_model=32, n_layer=2, n_head=4, d_ff=64, max_positions=64
    )


def examples(tok: Tokenizer) -> list[list[int]]:
    return [
        tok.encode(LECTURE * 3, add_special_tokens=True),
        tok.encode("我们一起出去玩吧" * 3, add_special_tokens=True),
    ]


@pytest.mark.parametrize("name", MINE)
def test_batch_trains_the_matching_model_family(tok, name):
    torch.manual_seed(0)
    objective = build_objective(name, tok, seed=0)
    batch = objective(examples(tok))
    assert (batch["labels"] != -100).any()
    model = build_model(tiny_config(objective.family, tok))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):  # the same batch again and again: the loss must fall
        loss = model(**batch).loss
        assert torch.isfinite(loss)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("name", MINE)
def test_state_dict_resumes_the_exact_next_batch(tok, name):
    data = examples(tok)
    first = build_objective(name, tok, seed=7)
    for _ in range(3):
        first(data)
    state = first.state_dict()
    expected = first(data)
    resumed = build_objective(name, tok, seed=123)
    resumed.load_state_dict(state)
    got = resumed(data)
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[k], expected[k]) for k in expected)


@pytest.mark.parametrize("name", MINE)
def test_empty_example_is_a_data_error(tok, name):
    with pytest.raises(DataError, match="no tokens"):
        build_objective(name, tok)([tok.encode(LECTURE), []])


def test_unknown_and_bad_options_are_config_errors(tok):
    with pytest.raises(ConfigError, match='did you mean "mlm_probability"'):
        build_objective("mlm", tok, mlm_probabilty=0.2)
    with pytest.raises(ConfigError, match='did you mean "max_span_length"'):
        build_objective("span", tok, max_span_len=5)
    with pytest.raises(ConfigError, match="mlm_probability=1.5"):
        build_objective("mlm", tok, mlm_probability=1.5)
    with pytest.raises(ConfigError, match="exceeds 1"):
        build_objective("wwm", tok, mask_replace_prob=0.8, random_replace_prob=0.3)
    with pytest.raises(ConfigError, match="max_span_length"):
        build_objective("span", tok, max_span_length=0)
    with pytest.raises(DataError, match="selected position 0"):
        build_objective("mlm", tok)(
            [{"input_ids": tok.encode(LECTURE, add_special_tokens=True), "selected": [0]}]
        )


@pytest.mark.parametrize("name", MINE)
def test_numpy_uint16_examples_from_a_token_store(tok, name):
    data = examples(tok)
    stored = [np.asarray(ids, dtype=np.uint16) for ids in data]  # what a memory-mapped store hands out
    got, expected = build_objective(name, tok, seed=5)(stored), build_objective(name, tok, seed=5)(data)
    assert all(torch.equal(got[k], expected[k]) for k in expected)
