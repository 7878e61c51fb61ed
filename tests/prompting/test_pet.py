"""PET's mechanics against hand computation: label scores of a masked LM (log-softmax at the [MASK]s, a
multi-token word as the mean over its pieces) and of causal / prefix / seq2seq LMs (one plain forward),
the training loss (1 - α)·CE over the verbalizer + α·MLM, the task protocol, the accuracy-weighted
ensemble, soft labels and the distillation loss."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from plmkit.data.sources import SkipReport
from plmkit.data.tasks import LabelVocab, Row, TaskSplit
from plmkit.errors import ConfigError, DataError, ShapeError
from plmkit.evaluate.tasks.run import evaluate_split
from plmkit.prompting.patterns import Pattern, Verbalizer
from plmkit.prompting.pet import (
    accuracy,
    distillation_loss,
    ensemble_logits,
    ensemble_weights,
    label_scores,
    pet_loss,
    soft_labels,
)
from plmkit.prompting.pet_task import PetConfig, PetTask
from plmkit.tokenizer import Tokenizer

WORDS = "good bad great awful it was the movie film story plot a very really , . ?".split()
TEXTS = ["the movie was good", "a very bad film", "awful plot", "really great story , good"]
LABELS = ["1", "0", "0", "1"]
MULTI = {"0": ["bad", "awful"], "1": ["good", "greatest"]}  # "greatest": great ##e ##s ##t


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.train([" ".join(WORDS)] * 20, kind="wordpiece", vocab_size=80, family="bert")


def lm(tiny_model, tok, family, **kw):
    return tiny_model(family, vocab_size=tok.vocab_size, max_positions=64, **kw)


def split_of(texts=TEXTS, labels=LABELS) -> TaskSplit:
    rows = [Row({"text": t, "label": y}, f"mem:{i + 1}") for i, (t, y) in enumerate(zip(texts, labels))]
    return TaskSplit("train", "mem", rows, SkipReport())


def close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-5) -> bool:
    """Equal within tol (torch.testing.assert_close would import sympy: seconds per test run)."""
    return a.shape == b.shape and float((a - b).abs().max()) <= tol


def state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


# ---- scores --------------------------------------------------------------------------------------------
def mlm_by_hand(model, tok, text: str, word: str) -> float:
    """Mean over the word's pieces of log p(piece_i at mask_i), the pattern written out with k [MASK]s."""
    pieces = tok.encode(word)
    ids = torch.tensor([tok.encode(f"{text} It was {'[MASK]' * len(pieces)}.", add_special_tokens=True)])
    at = (ids[0] == tok.mask_id).nonzero()[:, 0]
    logprobs = model(ids).logits[0].log_softmax(-1)  # (T, V)
    return sum(float(logprobs[at[i], p]) for i, p in enumerate(pieces)) / len(pieces)


def test_masked_lm_scores_equal_log_softmax_at_the_masks(tiny_model, tok):
    model = lm(tiny_model, tok, "masked", dropout=0.1).train()  # dropout is off for scoring only
    before = state(model)
    pattern, verbalizer = Pattern.parse("{text} It was {mask}."), Verbalizer(MULTI, tok)
    rows = [{"text": t} for t in TEXTS]
    scores = label_scores(model, tok, pattern, verbalizer, rows, max_length=32, batch_size=3)
    assert model.training and all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert scores.shape == (4, 2) and scores.dtype == torch.float32
    model.eval()
    with torch.no_grad():
        for i, text in enumerate(TEXTS):
            bad, awful = mlm_by_hand(model, tok, text, "bad"), mlm_by_hand(model, tok, text, "awful")
            good, greatest = mlm_by_hand(model, tok, text, "good"), mlm_by_hand(model, tok, text, "greatest")
            assert scores[i].tolist() == pytest.approx([(bad + awful) / 2, (good + greatest) / 2], abs=1e-5)
    # the same scores whatever the batching (padding), and from Row objects
    again = label_scores(model, tok, pattern, verbalizer, split_of().rows, max_length=32, batch_size=1)
    assert close(again, scores)


def continuation_by_hand(model, prompt: list[int], word: list[int]) -> float:
    family = model.config.family
    if family == "seq2seq":
        logits = model(torch.tensor([prompt]), labels=torch.tensor([word]), compute_logits=True).logits
        logprobs = logits[0].log_softmax(-1)
        return sum(float(logprobs[i, t]) for i, t in enumerate(word)) / len(word)
    kwargs = {"prefix_lengths": torch.tensor([len(prompt)])} if family == "prefix" else {}
    logprobs = model(torch.tensor([prompt + word]), **kwargs).logits[0].log_softmax(-1)
    return sum(float(logprobs[len(prompt) - 1 + i, t]) for i, t in enumerate(word)) / len(word)


@pytest.mark.parametrize("family", ["causal", "prefix", "seq2seq"])
def test_left_to_right_scores_equal_one_forward(tiny_model, tok, family):
    model = lm(tiny_model, tok, family, dropout=0.1).train()
    before = state(model)
    pattern, verbalizer = Pattern.parse("{text} It was {mask}"), Verbalizer(MULTI, tok)
    scores = label_scores(model, tok, pattern, verbalizer, [{"text": t} for t in TEXTS[:2]], 32, batch_size=3)
    assert model.training and all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    model.eval()
    closing = [tok.sep_id] if family == "seq2seq" else []  # an encoder reads the whole template
    with torch.no_grad():
        for i, text in enumerate(TEXTS[:2]):
            prompt = [tok.cls_id, *tok.encode(f"{text} it was"), *closing]
            word = {
                w: continuation_by_hand(model, prompt, tok.encode(w))
                for w in ("bad", "awful", "good", "greatest")
            }
            expected = [(word["bad"] + word["awful"]) / 2, (word["good"] + word["greatest"]) / 2]
            assert scores[i].tolist() == pytest.approx(expected, abs=1e-5)
    with pytest.raises(ConfigError, match="has text after"):
        label_scores(model, tok, Pattern.parse("{text} It was {mask}."), verbalizer, [{"text": "a"}], 32)


def test_scores_need_a_language_model(tok):
    from plmkit.model import ModelConfig
    from plmkit.model.heads import SequenceClassifier

    model = SequenceClassifier(
        ModelConfig(family="masked", vocab_size=tok.vocab_size, d_model=32, n_layer=1, n_head=2), 2
    )
    with pytest.raises(ConfigError, match="SequenceClassifier gives logits of shape"):
        label_scores(model, tok, Pattern.parse("{text} {mask}"), Verbalizer(MULTI, tok), [{"text": "a"}], 16)


# ---- the training loss ---------------------------------------------------------------------------------
SINGLE = {"0": ["bad", "awful"], "1": ["good"]}


def make_task(tok, **kw) -> PetTask:
    options = dict(patterns=["{text} It was {mask}.", "{text}? {mask}!"], verbalizer=SINGLE, max_length=32)
    return PetTask(PetConfig(**{**options, **kw}), tok)


def test_pet_loss_equals_the_formula(tiny_model, tok):
    model = lm(tiny_model, tok, "masked")
    alpha = 0.3
    task = make_task(tok, alpha=alpha, mlm_probability=0.5, pattern=1)
    features = task.features(split_of())
    batch = task.collate(features)
    assert (batch["mlm_labels"] != -100).any()
    loss_sum, count = task({"model": model}, batch)
    assert count == 4 == task.count(batch)
    ids = {w: tok.token_to_id(w) for w in ("bad", "awful", "good")}
    ce = 0.0
    with torch.no_grad():
        for f in features:
            assert f["input_ids"] == tok.encode(f"{TEXTS[f['row']]}? [MASK]!", add_special_tokens=True)
            at = model(torch.tensor([f["input_ids"]])).logits[0, f["mask_position"]]  # (V,)
            label_logits = torch.stack([(at[ids["bad"]] + at[ids["awful"]]) / 2, at[ids["good"]]])
            ce += float(-label_logits.log_softmax(-1)[f["label"]])
        mlm = model(batch["mlm_input_ids"], batch["mlm_attention_mask"], labels=batch["mlm_labels"]).loss
    expected = (1 - alpha) * ce + alpha * 4 * float(mlm)
    assert loss_sum.item() == pytest.approx(expected, rel=1e-5)
    loss_sum.backward()
    assert model.lm_head.decoder.weight.grad.abs().sum() > 0
    # alpha = 0: the cross entropy alone, no MLM batch needed
    plain = make_task(tok, alpha=0.0, pattern=1).collate(features)
    assert "mlm_input_ids" not in plain
    with torch.no_grad():
        assert float(pet_loss(model, plain, 0.0)[0]) == pytest.approx(ce, rel=1e-5)
    with pytest.raises(ConfigError, match="lacks mlm_input_ids"):
        pet_loss(model, plain, 0.5)
    with pytest.raises(ConfigError, match=r"must be in \[0, 1\]"):
        pet_loss(model, batch, 1.5)


def test_mlm_batch_is_reproducible_and_masks_no_special_token(tok):
    task = make_task(tok, alpha=0.1, mlm_probability=0.5)
    features = task.features(split_of())
    a, b = task.collate(features), task.collate(features)
    assert all(torch.equal(a[k], b[k]) for k in a)
    special = torch.tensor(tok.all_special_ids)
    assert not torch.isin(a["mlm_labels"][a["mlm_labels"] != -100], special).any()
    task.add_unlabelled(split_of(["really really good story", "the plot"], ["1", "0"]).rows)
    c = task.collate(features)
    sources = {tuple(ids) for ids in task.unlabelled}
    originals = torch.where(c["mlm_labels"] != -100, c["mlm_labels"], c["mlm_input_ids"])
    for original, mask in zip(originals, c["mlm_attention_mask"]):  # each text is an unlabelled one
        assert tuple(original[: int(mask.sum())].tolist()) in sources


# ---- the task ------------------------------------------------------------------------------------------
def test_task_protocol_and_zero_shot(tiny_model, tok):
    model = lm(tiny_model, tok, "masked")
    task = make_task(tok)
    assert task.labels.names == ["0", "1"] and task.label_vocab(split_of()).names == ["0", "1"]
    assert task.columns() == (("text", "label"), ("text_pair", "id"), ("text", "text_pair"))
    split = split_of()
    result = evaluate_split(task, model, split, batch_size=3)
    scores = task.scores(model, split)
    assert result.predictions == scores.argmax(-1).tolist()  # the label logits rank as the log-probs
    zero = task.zero_shot(model, split)
    targets = [int(y) for y in LABELS]
    assert zero.predictions == result.predictions
    assert zero.metrics["accuracy"] == pytest.approx(accuracy(scores, targets))
    assert zero.records[0] == {"where": "mem:1", "prediction": str(zero.predictions[0]), "label": "1"}
    task.check_model(model, "base")


def test_task_labels_heads_and_errors(tiny_model, tok):
    from plmkit.model.heads import TransformerModel

    flipped = PetTask(PetConfig(patterns=["{text} {mask}"], verbalizer=SINGLE), tok, LabelVocab(["1", "0"]))
    assert flipped.verbalizer.labels == ["1", "0"] and flipped.verbalizer.words == [
        ["good"],
        ["bad", "awful"],
    ]
    with pytest.raises(ConfigError, match="differ from the verbalizer"):
        PetTask(PetConfig(patterns=["{text} {mask}"], verbalizer=SINGLE), tok, LabelVocab(["0", "2"]))
    with pytest.raises(ConfigError, match="'greatest'.*is 4 tokens"):
        PetTask(PetConfig(patterns=["{text} {mask}"], verbalizer=MULTI), tok)
    with pytest.raises(ConfigError, match="task.options.pattern=2 but there are 2 patterns"):
        make_task(tok, pattern=2)
    with pytest.raises(ConfigError, match="task.options.patterns is empty"):
        make_task(tok, patterns=[])
    with pytest.raises(ConfigError, match="task.options.alpha=2 is out of range"):
        make_task(tok, alpha=2)
    with pytest.raises(ConfigError, match="unknown slot"):
        make_task(tok, patterns=["{text} {mask}", "{sentence} {mask}"])
    with pytest.raises(DataError, match="mem:2"):
        make_task(tok).features(split_of(TEXTS[:2], ["1", "neutral"]))
    task = make_task(tok)
    masked = lm(tiny_model, tok, "masked")
    assert task.new_head(masked, "base") is masked
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        given = task.new_head(TransformerModel(masked.config), "bare")
    assert type(given).__name__ == "MaskedLM" and any("newly initialized" in str(w.message) for w in caught)
    with pytest.raises(ConfigError, match="holds a CausalLM"):
        task.new_head(lm(tiny_model, tok, "causal"), "gpt")


# ---- ensemble and distillation ---------------------------------------------------------------------------
def test_ensemble_weights_are_normalised_train_accuracies():
    assert ensemble_weights([0.6, 0.2]) == [0.6 / 0.8, 0.2 / 0.8]
    assert ensemble_weights([0.5, 0.25, 0.25]) == [0.5, 0.25, 0.25]
    assert ensemble_weights([0.0, 0.4]) == [0.0, 1.0]
    with pytest.raises(ConfigError, match="none"):
        ensemble_weights([])
    with pytest.raises(ConfigError, match=r"in \[0, 1\]"):
        ensemble_weights([0.5, 75])
    with pytest.raises(ConfigError, match="weights are undefined"):
        ensemble_weights([0.0, 0.0])


def test_ensemble_soft_labels_and_distillation_by_hand():
    s1 = torch.tensor([[1.0, -1.0, 0.5], [0.0, 2.0, -3.0]])
    s2 = torch.tensor([[3.0, 0.0, -0.5], [-1.0, 1.0, 1.0]])
    merged = ensemble_logits([s1, s2], ensemble_weights([0.6, 0.2]))
    assert close(merged, (0.6 * s1 + 0.2 * s2) / 0.8)
    assert close(ensemble_logits([s1, s2], [3.0, 1.0]), merged)  # 1/Z Σ w s
    q = soft_labels(merged)  # T = 2
    by_hand = torch.exp(merged / 2) / torch.exp(merged / 2).sum(-1, keepdim=True)
    assert close(q, by_hand)
    assert q[0].tolist() == pytest.approx(
        [
            torch.exp(merged[0, j] / 2).item() / sum(torch.exp(merged[0, k] / 2).item() for k in range(3))
            for j in range(3)
        ]
    )
    z = torch.tensor([[0.2, -0.4, 1.0], [1.5, 0.0, -1.0]], requires_grad=True)
    total, count = distillation_loss(z, q)
    expected = -sum(
        float(q[i, l]) * float(torch.log(torch.exp(z[i, l]) / torch.exp(z[i]).sum()).detach())
        for i in range(2)
        for l in range(3)
    )
    assert count == 2 and total.item() == pytest.approx(expected, rel=1e-6)
    # at temperature T the gradient is that of PET's code: KL(q || softmax(z / T)) * T² (summed)
    ours = torch.autograd.grad(distillation_loss(z, q, temperature=2.0)[0], z)[0]
    pet = torch.autograd.grad(F.kl_div(F.log_softmax(z / 2, -1), q, reduction="sum") * 4, z)[0]
    assert close(ours, pet)
    with pytest.raises(ShapeError):
        distillation_loss(z, q[:, :2])
    with pytest.raises(ShapeError, match="one weight per pattern"):
        ensemble_logits([s1, s2], [1.0])
    with pytest.raises(ShapeError, match="same rows and labels"):
        ensemble_logits([s1, s2[:1]], [0.5, 0.5])
    with pytest.raises(ConfigError, match="temperature"):
        soft_labels(merged, 0.0)


def test_a_few_steps_of_pet_fit_the_training_rows(tiny_model, tok):
    """The loss is a real training signal: plain gradient descent on it (PET's alpha = 1e-4, the MLM term
    included) fits four rows. (No torch.optim: its first use imports for seconds.)"""
    model = lm(tiny_model, tok, "masked").train()
    task = make_task(tok)
    split = split_of()
    batch = task.collate(task.features(split))
    losses = []
    for _ in range(30):
        loss_sum, count = task({"model": model}, batch)
        model.zero_grad()
        (loss_sum / count).backward()
        with torch.no_grad():
            for p in model.parameters():
                p -= 0.3 * p.grad
        losses.append(loss_sum.item() / count)
    assert losses[-1] < 0.1 < 0.5 < losses[0]
    assert evaluate_split(task, model, split).metrics["accuracy"] == 1.0 and model.training
