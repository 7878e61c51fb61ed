"""Encoder–decoder objectives: T5 span corruption and BART denoising."""

from __future__ import annotations

import math

import pytest
import torch

from plmkit.data.objectives import build_objective
from plmkit.data.objectives.bart import BartDenoisingObjective
from plmkit.data.objectives.t5_span import (
    SpanCorruptionObjective,
    random_segmentation,
    random_spans_helper,
    random_spans_noise_mask,
    span_corruption_lengths,
)
from plmkit.errors import ConfigError
from plmkit.model import ModelConfig, Seq2SeqLM
from plmkit.tokenizer import SpecialTokens, Tokenizer
from zh_tokenizer import COMMON, zh_char_tokenizer

SENTINELS = [f"<extra_id_{i}>" for i in range(100)]


def s2s_tokenizer(sentinels: bool = True, eos: bool = True) -> Tokenizer:
    """The Chinese char tokenizer plus <s> </s> (BART/T5) and the T5 sentinels as special tokens."""
    backend = zh_char_tokenizer().backend
    extra = (["<s>", "</s>"] if eos else []) + (SENTINELS if sentinels else [])
    backend.add_special_tokens(extra)
    special = SpecialTokens(
        pad="[PAD]",
        unk="[UNK]",
        cls="[CLS]",
        sep="[SEP]",
        mask="[MASK]",
        bos="<s>" if eos else None,
        eos="</s>" if eos else None,
        additional=SENTINELS if sentinels else [],
    )
    return Tokenizer(backend, special)


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return s2s_tokenizer()


def random_text(tok: Tokenizer, n: int, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    chars = torch.randint(len(COMMON), (n,), generator=g).tolist()
    return [tok.token_to_id(COMMON[c]) for c in chars]


def tiny_seq2seq(tok: Tokenizer) -> Seq2SeqLM:
    torch.manual_seed(0)
    config = ModelConfig(
        family="seq2seq",
        vocab_size=tok.vocab_size,
        d_model=32,
        n_layer=2,
        n_head=2,
        d_ff=64,
        max_positions=256,
        pad_token_id=tok.pad_id,
        decoder_start_token_id=tok.eos_id,
    )
    return Seq2SeqLM(config)


def runs_through_seq2seq(tok: Tokenizer, batch: dict[str, torch.Tensor]) -> None:
    model = tiny_seq2seq(tok)
    out = model(**batch)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert model.encoder.embed.tokens.weight.grad is not None


# ---- T5 span corruption -------------------------------------------------------------------------
def test_t5_lengths_as_t5_computes_them():
    assert random_spans_helper(512) == (568, 114)  # T5's numbers for its 512-token inputs
    assert span_corruption_lengths(568) == (512, 114)
    for inputs_length in (64, 128, 200, 512, 1024):
        tokens_length, targets_length = random_spans_helper(inputs_length)
        assert span_corruption_lengths(tokens_length)[0] <= inputs_length
        assert span_corruption_lengths(tokens_length + 1)[0] > inputs_length
        assert span_corruption_lengths(tokens_length)[1] == targets_length


def test_t5_corruption_has_the_computed_lengths(tok):
    objective = SpanCorruptionObjective(tok, seed=3)
    tokens_length, targets_length = random_spans_helper(512)
    for seed in range(5):
        inputs, targets = objective.corrupt(random_text(tok, tokens_length, seed))
        assert (len(inputs), len(targets)) == (512, targets_length)


def test_t5_hand_checked_examples(tok):
    objective = SpanCorruptionObjective(tok)
    text = "今天天气真好我们一起出去玩吧明天见"  # 17 tokens
    ids = tok.encode(text)
    # 17 tokens: round(2.55) = 3 noise tokens in round(1) = 1 span, after the 14 kept ones: no choice left
    assert random_spans_noise_mask(17, 0.15, 3.0, torch.Generator()).tolist() == [False] * 14 + [True] * 3
    batch = objective([ids])
    assert tok.decode(batch["input_ids"][0], skip_special_tokens=False).split() == (
        list("今天天气真好我们一起出去玩吧") + ["<extra_id_0>", "</s>"]
    )
    assert tok.decode(batch["labels"][0], skip_special_tokens=False).split() == (
        ["<extra_id_0>", "明", "天", "见", "</s>"]
    )
    # a given mask -> sentinels in order, each span once in the inputs and once in the targets
    objective.noise_mask = lambda n: torch.tensor([0, 0, 1, 1, 1, 0, 0, 1, 0, 0], dtype=torch.bool)
    inputs, targets = objective.corrupt(tok.encode("今天天气真好我们一起"))
    assert tok.decode(inputs, skip_special_tokens=False).split() == [
        "今",
        "天",
        "<extra_id_0>",
        "好",
        "我",
        "<extra_id_1>",
        "一",
        "起",
        "</s>",
    ]
    assert tok.decode(targets, skip_special_tokens=False).split() == [
        "<extra_id_0>",
        "天",
        "气",
        "真",
        "<extra_id_1>",
        "们",
        "</s>",
    ]


def test_t5_statistics_over_100k_tokens(tok):
    objective = build_objective("t5_span", tok, seed=0)
    sentinel_ids = set(objective.sentinel_ids(100))
    tokens = noise = spans = 0
    for start in range(0, 200, 20):
        examples = [random_text(tok, 568, seed) for seed in range(start, start + 20)]
        batch = objective(examples)
        for row, ids in enumerate(examples):
            inputs = [t for t in batch["input_ids"][row].tolist() if t != tok.pad_id]
            targets = [t for t in batch["labels"][row].tolist() if t != -100]
            assert inputs[0] not in sentinel_ids  # T5 starts with kept text
            # inputs + targets give back the original text
            pieces, restored = {}, []
            for t in targets[:-1]:
                if t in sentinel_ids:
                    key = t
                    pieces[key] = []
                else:
                    pieces[key].append(t)
            for t in inputs[:-1]:
                restored.extend(pieces[t] if t in sentinel_ids else [t])
            assert restored == ids
            tokens += len(ids)
            noise += sum(len(p) for p in pieces.values())
            spans += len(pieces)
    assert tokens >= 100_000
    assert abs(noise / tokens - 0.15) <= 0.01
    assert abs(noise / spans - 3.0) <= 0.3


def test_t5_segmentation_is_random_and_non_empty():
    g = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(200):
        lengths = random_segmentation(10, 4, g)
        assert lengths.sum() == 10 and (lengths >= 1).all() and len(lengths) == 4
        seen.add(tuple(lengths.tolist()))
    assert len(seen) > 40  # C(9, 3) = 84 compositions


def test_t5_special_tokens_never_corrupted(tok):
    objective = SpanCorruptionObjective(tok, seed=1)
    text = random_text(tok, 30, 0)
    ids = [*text[:15], tok.sep_id, *text[15:], tok.eos_id]  # a special inside, eos at the end
    for _ in range(50):
        inputs, targets = objective.corrupt(ids)
        assert tok.sep_id in inputs and tok.sep_id not in targets
        assert inputs.count(tok.eos_id) == 1 and inputs[-1] == tok.eos_id  # the trailing eos is not doubled


def test_t5_batch_is_padded_and_runs_through_seq2seq(tok):
    objective = SpanCorruptionObjective(tok, seed=0)
    batch = objective([random_text(tok, 60, 1), random_text(tok, 25, 2)])
    assert set(batch) == {"input_ids", "attention_mask", "labels", "decoder_attention_mask"}
    short = batch["attention_mask"][1].sum()
    assert (batch["input_ids"][1, short:] == tok.pad_id).all()
    assert ((batch["labels"] == -100) == (batch["decoder_attention_mask"] == 0)).all()
    runs_through_seq2seq(tok, batch)


def test_t5_missing_tokens_are_config_errors():
    with pytest.raises(ConfigError, match="<extra_id_0>"):
        build_objective("t5_span", s2s_tokenizer(sentinels=False))
    with pytest.raises(ConfigError, match="eos"):
        build_objective("t5_span", s2s_tokenizer(eos=False))
    with pytest.raises(ConfigError, match="noise_density"):
        build_objective("t5_span", s2s_tokenizer(), noise_density=1.5)
    with pytest.raises(ConfigError, match="noise_densty"):
        build_objective("t5_span", s2s_tokenizer(), noise_densty=0.2)


def test_t5_resume_draws_the_same_batches(tok):
    examples = [random_text(tok, 50, s) for s in range(4)]
    objective = SpanCorruptionObjective(tok, seed=5)
    objective(examples)
    state = objective.state_dict()
    expected = objective(examples)
    resumed = SpanCorruptionObjective(tok, seed=99)
    resumed.load_state_dict(state)
    got = resumed(examples)
    assert all(torch.equal(expected[k], got[k]) for k in expected)


# ---- BART denoising -----------------------------------------------------------------------------
def body_of(tok: Tokenizer, row: torch.Tensor) -> list[int]:
    ids = [t for t in row.tolist() if t not in (tok.pad_id, -100)]
    assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
    return ids[1:-1]


def test_bart_labels_reconstruct_the_original(tok):
    text = tok.encode("今天天气真好。我们一起出去玩吧。")
    batch = BartDenoisingObjective(tok, seed=0)([text, [tok.bos_id, *text[:7], tok.eos_id]])
    assert body_of(tok, batch["labels"][0]) == text
    assert body_of(tok, batch["labels"][1]) == text[:7]  # bos/eos of the example are not doubled
    assert ((batch["labels"] == -100) == (batch["decoder_attention_mask"] == 0)).all()


def test_bart_poisson_spans_mean_three(tok):
    objective = BartDenoisingObjective(tok, seed=0, permute_sentences=0.0)
    masked = masks = 0
    for start in range(0, 400, 50):
        examples = [random_text(tok, 200, s) for s in range(start, start + 50)]
        batch = objective(examples)
        for row, ids in enumerate(examples):
            inputs = body_of(tok, batch["input_ids"][row])
            kept = [t for t in inputs if t != tok.mask_id]
            assert len(ids) - len(kept) == math.ceil(0.3 * len(ids))  # mask_ratio of the tokens
            masked += len(ids) - len(kept)
            masks += inputs.count(tok.mask_id)
    assert masks > 5000
    assert abs(masked / masks - 3.0) <= 0.3  # one mask per span, 0-length spans included
    lengths = [n for _ in range(200) for n in objective.span_lengths(10_000)]
    assert abs(sum(lengths) / len(lengths) - 3.0) <= 0.1


def test_bart_zero_length_spans_insert_a_mask(tok):
    objective = BartDenoisingObjective(tok, seed=0, permute_sentences=0.0, mask_ratio=0.2)
    objective.span_lengths = lambda num_to_mask: [0, 2, 0]  # 2 = ceil(10 * 0.2)
    ids = tok.encode("今天天气真好我们一起")
    for _ in range(20):
        out = objective.infill(ids)
        assert out.count(tok.mask_id) == 3 and len(out) == 10 - 2 + 3
        kept = [t for t in out if t != tok.mask_id]
        # the kept tokens are the original with one 2-token run removed
        assert any(kept == ids[:i] + ids[i + 2 :] for i in range(9))
        assert all(not (a == b == tok.mask_id) for a, b in zip(out, out[1:]))  # spans never touch
    # they occur naturally too (P(0) = e^-3 ≈ 5%): more masks than tokens removed in runs
    objective = BartDenoisingObjective(tok, seed=0, permute_sentences=0.0)
    draws = [n for _ in range(50) for n in objective.span_lengths(100)]
    assert 0 in draws


def test_bart_permutation_keeps_the_sentences(tok):
    text = tok.encode("今天天气真好。我们一起出去玩吧！明天见？好的。")
    sentences = ["今天天气真好。", "我们一起出去玩吧！", "明天见？", "好的。"]
    objective = BartDenoisingObjective(tok, seed=0, mask_ratio=0.0)
    orders = set()
    for _ in range(30):
        out = tok.decode(body_of(tok, objective([text])["input_ids"][0])).replace(" ", "")
        pieces = [""]
        for c in out:
            pieces[-1] += c
            if c in "。！？":
                pieces.append("")
        pieces = [p for p in pieces if p]
        assert sorted(pieces) == sorted(sentences)  # the same multiset of sentences
        orders.add(tuple(pieces))
    assert len(orders) > 5  # and really shuffled


def test_bart_rotation_is_a_rotation(tok):
    text = random_text(tok, 20, 0)
    objective = BartDenoisingObjective(
        tok, seed=0, mask_ratio=0.0, permute_sentences=0.0, rotate_probability=1.0
    )
    starts = set()
    for _ in range(30):
        out = body_of(tok, objective([text])["input_ids"][0])
        start = next(s for s in range(1, 20) if text[s:] + text[:s] == out)
        starts.add(start)
    assert len(starts) > 8


def test_bart_deletion_deletes_but_keeps_special_tokens(tok):
    text = random_text(tok, 100, 0)
    ids = [*text[:50], tok.sep_id, *text[50:]]
    objective = BartDenoisingObjective(tok, seed=0, mask_ratio=0.0, permute_sentences=0.0, deletion_ratio=0.3)
    out = body_of(tok, objective([ids])["input_ids"][0])
    assert tok.sep_id in out
    it = iter(ids)
    assert all(t in it for t in out)  # a subsequence
    assert 50 < len(out) < 90


def test_bart_specials_survive_all_noise(tok):
    text = tok.encode("今天天气真好。我们一起出去玩吧。明天见。")
    ids = [*text[:7], tok.sep_id, *text[7:]]
    objective = BartDenoisingObjective(
        tok, seed=0, deletion_ratio=0.1, rotate_probability=0.5, mask_ratio=0.5
    )
    for _ in range(50):
        out = body_of(tok, objective([ids])["input_ids"][0])
        assert out.count(tok.sep_id) == 1


def test_bart_runs_through_seq2seq(tok):
    objective = build_objective("bart", tok, seed=0, deletion_ratio=0.1, rotate_probability=0.5)
    batch = objective([tok.encode("今天天气真好。我们一起出去玩吧。"), tok.encode("明天见。")])
    runs_through_seq2seq(tok, batch)


def test_bart_config_errors(tok):
    with pytest.raises(ConfigError, match="sentence_end_tokens"):
        BartDenoisingObjective(tok, sentence_end_tokens=("<nope>",))
    BartDenoisingObjective(tok, sentence_end_tokens=("<nope>",), permute_sentences=0.0)  # fine when off
    with pytest.raises(ConfigError, match="mask_ratio"):
        BartDenoisingObjective(tok, mask_ratio=1.5)
