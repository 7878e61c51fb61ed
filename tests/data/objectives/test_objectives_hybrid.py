"""One-stack hybrid objectives: UniLM mixed masks and GLM blank infilling (PrefixLM family)."""

from __future__ import annotations

import pytest
import torch

from plmkit.data.objectives import build_objective
from plmkit.data.objectives.glm import GLMObjective
from plmkit.data.objectives.unilm import (
    BIDIRECTIONAL,
    KINDS,
    LEFT_TO_RIGHT,
    RIGHT_TO_LEFT,
    SEQ2SEQ,
    UniLMObjective,
)
from plmkit.errors import ConfigError
from plmkit.model import ModelConfig, PrefixLM, masks
from plmkit.tokenizer import SpecialTokens, Tokenizer
from zh_tokenizer import COMMON, zh_char_tokenizer

GLM_TOKENS = ["[gMASK]", "[sMASK]", "<sop>", "<eop>"]


def glm_tokenizer(with_glm: bool = True) -> Tokenizer:
    """The Chinese char tokenizer plus GLM's [gMASK] [sMASK] <sop> <eop> as special tokens."""
    backend = zh_char_tokenizer().backend
    extra = GLM_TOKENS if with_glm else []
    backend.add_special_tokens(extra)
    special = SpecialTokens(
        pad="[PAD]", unk="[UNK]", cls="[CLS]", sep="[SEP]", mask="[MASK]", additional=extra
    )
    return Tokenizer(backend, special)


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return glm_tokenizer()


def random_text(tok: Tokenizer, n: int, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return [tok.token_to_id(COMMON[c]) for c in torch.randint(len(COMMON), (n,), generator=g).tolist()]


def tiny_prefix_lm(tok: Tokenizer, **overrides) -> PrefixLM:
    torch.manual_seed(0)
    config = ModelConfig(
        family="prefix",
        vocab_size=tok.vocab_size,
        d_model=32,
        n_layer=2,
        n_head=2,
        d_ff=64,
        max_positions=128,
        pad_token_id=tok.pad_id,
        **overrides,
    )
    return PrefixLM(config).eval()


# ---- UniLM --------------------------------------------------------------------------------------
def test_unilm_kind_proportions(tok):
    objective = UniLMObjective(tok, seed=0)
    counts = torch.zeros(4)
    for start in range(0, 12_000, 400):
        _, kinds = objective.collate_with_kinds([random_text(tok, 6, s) for s in range(start, start + 400)])
        counts += torch.bincount(kinds, minlength=4)
    shares = counts / counts.sum()
    for kind, expected in zip(KINDS, (1 / 3, 1 / 6, 1 / 6, 1 / 3)):
        assert abs(shares[KINDS.index(kind)] - expected) <= 0.02, (kind, shares)
    custom = UniLMObjective(tok, seed=0, proportions=(0.5, 0.0, 0.0, 0.5))
    _, kinds = custom.collate_with_kinds([random_text(tok, 6, s) for s in range(2000)])
    assert set(kinds.tolist()) == {BIDIRECTIONAL, SEQ2SEQ}
    assert abs((kinds == SEQ2SEQ).float().mean() - 0.5) <= 0.04


def test_unilm_masks_are_the_model_masks(tok):
    objective = UniLMObjective(tok, seed=1)
    examples = [random_text(tok, n, s) for s, n in enumerate([5, 12, 9, 3, 20, 7, 14, 6] * 4)]
    batch, kinds = objective.collate_with_kinds(examples)
    assert set(kinds.tolist()) == {0, 1, 2, 3}
    b, t = batch["input_ids"].shape
    mask = batch["attention_mask"]
    assert mask.shape == (b, t, t) and mask.dtype == torch.bool
    for row, example in enumerate(examples):
        n = len(example) + 2 + (kinds[row] == SEQ2SEQ)
        keys = torch.arange(t) < n  # real keys
        if kinds[row] == BIDIRECTIONAL:
            expected = masks.bidirectional(t, t)[0, 0]
        elif kinds[row] == LEFT_TO_RIGHT:
            expected = masks.causal(t, t)[0, 0]
        elif kinds[row] == RIGHT_TO_LEFT:
            expected = masks.right_to_left(t, t)[0, 0]
        else:
            ids = batch["input_ids"][row].tolist()
            prefix = ids.index(tok.sep_id) + 1  # [CLS] S [SEP]
            expected = masks.prefix(torch.tensor([prefix]), t, t)[0, 0]
            assert batch["token_type_ids"][row].tolist() == [0] * prefix + [1] * (n - prefix) + [0] * (t - n)
        assert torch.equal(mask[row], expected & keys[None, :]), (row, KINDS[kinds[row]])
        if kinds[row] != SEQ2SEQ:
            assert batch["token_type_ids"][row].sum() == 0


def test_unilm_seq2seq_labels_exact(tok):
    """The docstring example: 今天天 -> 气真好, nothing selected for MLM."""
    objective = UniLMObjective(tok, seed=0, proportions=(0, 0, 0, 1), mlm_probability=1e-12)
    ids = tok.encode("今天天气真好")
    batch = objective([{"input_ids": [tok.cls_id, *ids, tok.sep_id], "source_length": 3}])
    t = tok.token_to_id
    assert batch["input_ids"][0].tolist() == [tok.cls_id, *ids[:3], tok.sep_id, *ids[3:], tok.sep_id]
    assert batch["labels"][0].tolist() == [
        -100,
        -100,
        -100,
        -100,
        t("气"),
        t("真"),
        t("好"),
        tok.sep_id,
        -100,
    ]
    assert batch["token_type_ids"][0].tolist() == [0, 0, 0, 0, 0, 1, 1, 1, 1]
    with pytest.raises(ConfigError, match="source_length"):
        objective([{"input_ids": ids, "source_length": 6}])


def test_unilm_mlm_labels_where_masked_and_never_on_specials(tok):
    objective = UniLMObjective(tok, seed=2)
    examples = [random_text(tok, 40, s) for s in range(300)]
    batch, kinds = objective.collate_with_kinds(examples)
    ids, labels = batch["input_ids"], batch["labels"]
    special = torch.isin(ids, torch.tensor([tok.cls_id, tok.sep_id, tok.pad_id]))
    selected = torch.zeros_like(special)
    text_tokens = 0
    for row, example in enumerate(examples):
        original = torch.tensor([tok.cls_id, *example, tok.sep_id])
        if kinds[row] == SEQ2SEQ:
            prefix = ids[row].tolist().index(tok.sep_id) + 1
            n = len(example) + 3
            target = torch.tensor([tok.sep_id, *example[prefix - 2 :], tok.sep_id])  # after the source [SEP]
            assert labels[row, prefix - 1 : n - 1].tolist() == target[1:].tolist()  # p predicts p+1
            assert labels[row, n - 1] == -100
            assert torch.equal(ids[row, prefix:n], target[1:])  # the target is never corrupted
            src = labels[row, 1 : prefix - 1]
            src_orig = original[1 : prefix - 1]
            assert ((src == -100) | (src == src_orig)).all()
            assert torch.equal(
                ids[row, :prefix][labels[row, :prefix] == -100],
                original[:prefix][labels[row, :prefix] == -100],
            )  # unselected: unchanged
            selected[row, 1 : prefix - 1] = src != -100
            text_tokens += prefix - 2
        else:
            n = len(example) + 2
            row_labels = labels[row, :n]
            assert ((row_labels == -100) | (row_labels == original)).all()
            selected[row, :n] = row_labels != -100
            text_tokens += len(example)
            assert (ids[row, :n][row_labels == -100] == original[row_labels == -100]).all()
    assert not (selected & special).any()
    rate = selected.sum().item() / text_tokens
    assert abs(rate - 0.15) < 0.01
    masked = ids[selected] == tok.mask_id
    assert abs(masked.float().mean() - 0.8) < 0.03


def test_unilm_seq2seq_source_does_not_see_target_in_prefix_lm(tok):
    objective = UniLMObjective(tok, seed=0, proportions=(0, 0, 0, 1))
    batch = objective([random_text(tok, 16, 0), random_text(tok, 11, 1)])
    model = tiny_prefix_lm(tok, type_vocab_size=2)
    with torch.no_grad():
        base = model(**batch, compute_logits=True).logits
        for row in range(2):
            ids = batch["input_ids"][row].tolist()
            prefix = ids.index(tok.sep_id) + 1
            n = int(batch["attention_mask"][row].any(0).sum())  # real keys
            changed = {k: v.clone() for k, v in batch.items()}
            changed["input_ids"][row, prefix:n] = torch.tensor(random_text(tok, n - prefix, 9))
            out = model(**changed, compute_logits=True).logits
            torch.testing.assert_close(out[row, :prefix], base[row, :prefix], rtol=0, atol=1e-6)
            assert not torch.allclose(out[row, prefix:n], base[row, prefix:n])
            # a target token is not seen by the positions before it (causal target)
            last = {k: v.clone() for k, v in batch.items()}
            last["input_ids"][row, n - 2] = tok.token_to_id("好") + 1
            out = model(**last, compute_logits=True).logits
            torch.testing.assert_close(out[row, : n - 2], base[row, : n - 2], rtol=0, atol=1e-6)
    loss = tiny_prefix_lm(tok, type_vocab_size=2).train()(**batch).loss
    assert torch.isfinite(loss)


def test_unilm_unidirectional_rows_in_prefix_lm(tok):
    model = tiny_prefix_lm(tok)
    for kind, proportions in ((LEFT_TO_RIGHT, (0, 1, 0, 0)), (RIGHT_TO_LEFT, (0, 0, 1, 0))):
        batch = UniLMObjective(tok, seed=0, proportions=proportions)([random_text(tok, 10, 0)])
        with torch.no_grad():
            base = model(**batch, compute_logits=True).logits
            changed = batch["input_ids"].clone()
            changed[0, 5] = tok.token_to_id("好")
            out = model(**{**batch, "input_ids": changed}, compute_logits=True).logits
        unaffected = slice(0, 5) if kind == LEFT_TO_RIGHT else slice(6, 12)
        torch.testing.assert_close(out[0, unaffected], base[0, unaffected], rtol=0, atol=1e-6)


def test_unilm_config_errors(tok):
    with pytest.raises(ConfigError, match="proportions"):
        build_objective("unilm", tok, proportions=(0.5, 0.5, 0.5, 0.5))
    with pytest.raises(ConfigError, match="mlm_probability"):
        build_objective("unilm", tok, mlm_probability=2.0)


# ---- GLM ------------------------------------------------------------------------------------------
def test_glm_hand_made_example_exact(tok):
    """The docstring table: 今天天气真好, spans 天气 and 好, part B order [好, 天气]."""
    objective = GLMObjective(tok)
    t = tok.token_to_id
    ids = tok.encode("今天天气真好")
    row = objective.infill_example(ids, spans=[(2, 4), (5, 6)], order=[1, 0])
    batch = objective.collate([row, objective.infill_example(ids[:3], [(1, 2)], [0])])
    cls, mask, sop, eop = tok.cls_id, tok.mask_id, t("<sop>"), t("<eop>")
    assert batch["input_ids"].tolist() == [
        [cls, t("今"), t("天"), mask, t("真"), mask, sop, t("好"), sop, t("天"), t("气")],
        [
            cls,
            t("今"),
            mask,
            t("天"),
            sop,
            t("天"),
            tok.pad_id,
            tok.pad_id,
            tok.pad_id,
            tok.pad_id,
            tok.pad_id,
        ],
    ]
    assert batch["labels"].tolist() == [
        [-100] * 6 + [t("好"), eop, t("天"), t("气"), eop],
        [-100] * 4 + [t("天"), eop] + [-100] * 5,
    ]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 4, 5, 5, 5, 3, 3, 3], [0, 1, 2, 3, 2, 2] + [0] * 5]
    assert batch["block_position_ids"].tolist() == [[0] * 6 + [1, 2, 1, 2, 3], [0] * 4 + [1, 2] + [0] * 5]
    assert batch["prefix_lengths"].tolist() == [6, 4]
    assert batch["attention_mask"].tolist() == [[1] * 11, [1] * 6 + [0] * 5]


def test_glm_sampled_spans(tok):
    objective = build_objective("glm", tok, seed=0)
    masked = total = n_spans = 0
    for start in range(0, 200, 50):
        examples = [random_text(tok, 200, s) for s in range(start, start + 50)]
        for ids in examples:
            spans = objective.sample_spans(ids)
            assert sum(e - s for s, e in spans) == round(0.15 * 200)
            assert all(s1 < s2 and e1 < s2 for (s1, e1), (s2, _) in zip(spans, spans[1:]))  # apart
            masked += sum(e - s for s, e in spans)
            n_spans += len(spans)
            total += len(ids)
        batch = objective(examples)
        # part B holds exactly the masked text; filling it back into part A restores the text
        for row, ids in enumerate(examples):
            n_a = int(batch["prefix_lengths"][row])
            inp = batch["input_ids"][row].tolist()
            pos = batch["position_ids"][row].tolist()
            blk = batch["block_position_ids"][row].tolist()
            lab = batch["labels"][row].tolist()
            fills: dict[int, list[int]] = {}
            for i in range(n_a, len(inp)):
                if blk[i] == 1:
                    assert inp[i] == tok.token_to_id("<sop>")
                    fills[pos[i]] = []
                elif blk[i] > 1:
                    fills[pos[i]].append(inp[i])
                    assert lab[i - 1] == inp[i]  # aligned: the previous position predicts this token
            restored = []
            for i in range(1, n_a):  # skip [CLS]
                restored.extend(fills[i] if inp[i] == tok.mask_id else [inp[i]])
            assert restored == ids
    assert abs(masked / total - 0.15) < 0.005
    assert 2.5 < masked / n_spans < 3.5


def test_glm_specials_never_in_spans(tok):
    objective = GLMObjective(tok, seed=0, mask_ratio=0.5)
    text = random_text(tok, 20, 0)
    ids = [*text[:10], tok.sep_id, *text[10:]]
    for _ in range(50):
        for s, e in objective.sample_spans(ids):
            assert tok.sep_id not in ids[s:e]


def test_glm_runs_through_prefix_lm_with_block_positions(tok):
    objective = GLMObjective(tok, seed=0)
    batch = objective([random_text(tok, 40, 0), random_text(tok, 17, 1)])
    model = tiny_prefix_lm(tok, block_positions=True).train()
    out = model(**batch)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert model.transformer.embed.block_positions.weight.grad.abs().sum() > 0
    # part A does not see part B
    with torch.no_grad():
        model.eval()
        base = model(**batch, compute_logits=True).logits
        changed = batch["input_ids"].clone()
        n_a = int(batch["prefix_lengths"][0])
        changed[0, n_a + 1] = tok.token_to_id("好")
        out = model(**{**batch, "input_ids": changed}, compute_logits=True).logits
    torch.testing.assert_close(out[0, : n_a + 1], base[0, : n_a + 1], rtol=0, atol=1e-6)


def test_glm_missing_tokens(tok):
    with pytest.raises(ConfigError, match="<sop>"):
        build_objective("glm", glm_tokenizer(with_glm=False))
    objective = build_objective("glm", tok, mask_token="[sMASK]")
    assert objective.mask_id == tok.token_to_id("[sMASK]")
