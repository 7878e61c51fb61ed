"""SpellingCorrector (MacBERT4CSC): shapes, the loss against a hand computation, the (sum, count) contract,
starting from a MaskedLM, gradients to both heads, save / load."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import plmkit
from plmkit.errors import ConfigError, ShapeError
from plmkit.model import MaskedLM, SpellingCorrector
from plmkit.model.csc import MACBERT4CSC_DETECTION_WEIGHT
from plmkit.model.registry import MODEL_CLASSES
from tiny import ARCHS, VOCAB, random_ids


def corrector(tiny_model, **overrides) -> tuple[MaskedLM, SpellingCorrector]:
    mlm = tiny_model("masked", **overrides)
    torch.manual_seed(1)
    return mlm, SpellingCorrector.from_masked_lm(mlm)


def batch(seed: int = 1) -> dict[str, torch.Tensor]:
    """2 rows: [CLS]=1 chars [SEP]=2, the second padded (pad 0) by 2; a few characters wrong."""
    ids = random_ids((2, 8), seed=seed)
    ids[:, 0], ids[0, 7], ids[1, 5] = 1, 2, 2
    ids[1, 6:] = 0
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    labels = ids.clone()
    labels[0, 3] = (ids[0, 3] + 1) % VOCAB
    labels[1, 2] = (ids[1, 2] + 5) % VOCAB
    special = (ids <= 2) | (mask == 0)
    labels[special] = -100
    detection = (labels != ids).long().masked_fill(special, -100)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels, "detection_labels": detection}


def test_shapes_and_defaults(tiny_model):
    _, model = corrector(tiny_model)
    b = batch()
    out = model(b["input_ids"], b["attention_mask"])
    assert out.logits.shape == (2, 8, VOCAB)
    assert out.detection_logits.shape == (2, 8) and out.detection_logits.dtype == torch.float32
    assert out.loss is None and out.loss_sum is None
    # pycorrector's macbert4csc: loss = 0.3 * correction + 0.7 * detection
    assert model.detection_weight == MACBERT4CSC_DETECTION_WEIGHT == 0.7
    assert MODEL_CLASSES["SpellingCorrector"] is SpellingCorrector


@pytest.mark.parametrize("weight", [0.7, 0.3])
def test_loss_is_the_formula(tiny_model, weight):
    mlm = tiny_model("masked")
    model = SpellingCorrector.from_masked_lm(mlm, detection_weight=weight)
    b = batch()
    out = model(**b)
    keep = b["labels"] != -100
    ce = F.cross_entropy(out.logits[keep].float(), b["labels"][keep])  # mean over the characters
    bce = F.binary_cross_entropy_with_logits(out.detection_logits[keep], b["detection_labels"][keep].float())
    torch.testing.assert_close(out.loss, weight * bce + (1 - weight) * ce)
    torch.testing.assert_close(out.detection_loss, bce)
    torch.testing.assert_close(out.correction_loss, ce)
    assert int(out.targets) == int(keep.sum()) == 10
    # detection_labels default to input_ids != labels at the labelled positions (the same here)
    without = model(**{k: v for k, v in b.items() if k != "detection_labels"})
    torch.testing.assert_close(without.loss, out.loss)


def test_loss_sum_count_adds_up_over_micro_batches(tiny_model):
    _, model = corrector(tiny_model)
    b = batch()
    total, count = model.loss_sum_count(b)
    torch.testing.assert_close(total / count, model(**b).loss)
    halves = [{k: v[i : i + 1] for k, v in b.items()} for i in range(2)]
    parts = [model.loss_sum_count(h) for h in halves]
    torch.testing.assert_close(sum(s for s, _ in parts), total)
    assert sum(int(n) for _, n in parts) == int(count)
    # the unequal halves make the mean of the means differ from the exact mean
    means = [s / n for s, n in parts]
    assert not torch.allclose((means[0] + means[1]) / 2, total / count)


def test_from_masked_lm_keeps_the_lm_logits(tiny_model):
    for arch in ({}, ARCHS["bert"]):
        mlm, model = corrector(tiny_model, **{k: v for k, v in arch.items() if k != "family"})
        b = batch()
        kwargs = {"attention_mask": b["attention_mask"]}
        assert torch.equal(model(b["input_ids"], **kwargs).logits, mlm(b["input_ids"], **kwargs).logits)
        assert not model.training
        # a copy: the corrector's weights are its own, still tied when the LM's are
        assert (
            model.transformer.embed.tokens.weight.data_ptr() != mlm.transformer.embed.tokens.weight.data_ptr()
        )
        assert model.lm_head.decoder.weight is model.transformer.embed.tokens.weight


def test_gradients_reach_both_heads_and_the_stack(tiny_model):
    _, model = corrector(tiny_model, tie_embeddings=False)
    model.train()
    model(**batch()).loss.backward()
    for head in (model.detection, model.lm_head.decoder):  # detection and correction heads
        assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.transformer.parameters())


def test_save_load_round_trip(tiny_model, tmp_path):
    _, model = corrector(tiny_model)
    model.detection_weight = 0.4
    plmkit.save(model, None, tmp_path / "csc")
    loaded, tokenizer = plmkit.load(tmp_path / "csc")
    assert type(loaded) is SpellingCorrector and tokenizer is None and loaded.detection_weight == 0.4
    b = batch()
    a, c = model(**b), loaded(**b)
    assert torch.equal(a.logits, c.logits) and torch.equal(a.detection_logits, c.detection_logits)
    torch.testing.assert_close(a.loss, c.loss)


def test_errors(tiny_model):
    mlm, model = corrector(tiny_model)
    b = batch()
    bad = dict(b, detection_labels=b["detection_labels"].masked_fill(b["labels"] != -100, -100))
    with pytest.raises(ShapeError, match="0 or 1"):
        model(**bad)
    with pytest.raises(ShapeError, match="labels"):
        model.loss_sum_count({"input_ids": b["input_ids"]})
    with pytest.raises(ConfigError, match="masked"):
        SpellingCorrector(tiny_model("causal").config)
    with pytest.raises(ConfigError, match="MaskedLM"):
        SpellingCorrector.from_masked_lm(model)


def test_matches_macbert4csc_on_a_hugging_face_bert(tmp_path):
    """A transformers BertForMaskedLM imported by plmkit.load: the corrector's logits are transformers'
    and its loss is macbert4csc's (0.3 · transformers' MLM loss + 0.7 · BCE of the detection head on
    transformers' last hidden states), both losses over the characters."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64
    )
    hf = transformers.BertForMaskedLM(config).eval()
    with torch.no_grad():  # move every weight off its initial value (norms at 1, biases at 0 hide mistakes)
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    hf.save_pretrained(tmp_path / "bert")
    mlm, _ = plmkit.load(tmp_path / "bert")
    model = SpellingCorrector.from_masked_lm(mlm)
    b = batch()
    out = model(**b)
    with torch.no_grad():
        ref = hf(
            input_ids=b["input_ids"],
            attention_mask=b["attention_mask"],
            labels=b["labels"],
            output_hidden_states=True,
        )
    keep = b["labels"] != -100
    torch.testing.assert_close(out.logits[keep], ref.logits[keep], atol=1e-4, rtol=1e-4)
    detection = F.linear(ref.hidden_states[-1], model.detection.weight, model.detection.bias).squeeze(-1)
    bce = F.binary_cross_entropy_with_logits(detection[keep], b["detection_labels"][keep].float())
    torch.testing.assert_close(out.loss, 0.3 * ref.loss + 0.7 * bce, atol=1e-4, rtol=1e-4)
