"""Gradient accumulation equals the big batch (issue 5): 4 micro-batches of 2 give the gradient of one
batch of 8 to 1e-6, even when the micro-batches hold very different numbers of target tokens.

The real `pretrain_step` runs on a Run-like object whose optimizer only records the gradients it is
asked to apply (lr is never used), so what is compared is exactly what the optimizer would see."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from plmkit.data.objectives.clm import CLMObjective
from plmkit.model import ModelConfig, build_model
from plmkit.recipes.config import RecipeConfig
from plmkit.recipes.pretrain import count_targets, pretrain_step
from plmkit.train.distributed.base import Strategy
from plmkit.train.precision import Precision

VOCAB = 97
PAD = 0


class GradientSpy(torch.optim.SGD):
    """An optimizer that records the gradients of each step instead of applying them."""

    def __init__(self, params):
        super().__init__(params, lr=0.0)
        self.seen: list[list[torch.Tensor]] = []

    @torch.no_grad()
    def step(self, closure=None):
        self.seen.append([p.grad.detach().clone() for g in self.param_groups for p in g["params"]])


def tiny(family: str) -> torch.nn.Module:
    torch.manual_seed(0)
    config = ModelConfig(
        family=family,
        vocab_size=VOCAB,
        d_model=32,
        n_layer=2,
        n_head=2,
        d_ff=64,
        max_positions=64,
        pad_token_id=PAD,
        dropout=0.0,
        attention_dropout=0.0,
    )
    return build_model(config).double()  # float64 weights: the comparison tests the weighting, not rounding


def fake_run(model: torch.nn.Module, clip_grad: float | None = None) -> SimpleNamespace:
    config = RecipeConfig()
    config.train.clip_grad = clip_grad
    optimizer = GradientSpy(model.parameters())
    return SimpleNamespace(
        model=model,
        precision=Precision("fp32", torch.device("cpu")),
        device=torch.device("cpu"),
        optimizer=optimizer,
        scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0),
        config=config,
        strategy=Strategy(),
    )


def reference_grads(
    model: torch.nn.Module, batch: dict, clip_grad: float | None = None
) -> list[torch.Tensor]:
    model.zero_grad(set_to_none=True)
    model(**batch).loss.backward()
    if clip_grad:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
    grads = [p.grad.detach().clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    return grads


def accumulated_grads(model: torch.nn.Module, micro_batches: list[dict], clip_grad: float | None = None):
    run = fake_run(model, clip_grad)
    loss = pretrain_step(run, micro_batches)
    assert len(run.optimizer.seen) == 1, "pretrain_step must step the optimizer once per call"
    return run.optimizer.seen[0], loss


def assert_same(got: list[torch.Tensor], want: list[torch.Tensor], atol: float = 1e-6) -> None:
    assert len(got) == len(want)
    worst = max(float((g - w).abs().max()) for g, w in zip(got, want))
    assert worst <= atol, f"accumulated gradient differs from the big batch by {worst:.3g}"


def naive_grads(model: torch.nn.Module, micro_batches: list[dict]) -> list[torch.Tensor]:
    """What plain `loss / k` accumulation would give: wrong when target counts differ."""
    model.zero_grad(set_to_none=True)
    for batch in micro_batches:
        (model(**batch).loss / len(micro_batches)).backward()
    grads = [p.grad.detach().clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    return grads


def split(batch: dict, size: int = 2) -> list[dict]:
    n = batch["input_ids"].shape[0]
    return [{k: v[i : i + size] for k, v in batch.items()} for i in range(0, n, size)]


# ---- CausalLM: padded sequences of very different lengths through the clm objective ----------------
LENGTHS = [3, 4, 30, 31, 2, 10, 25, 17]  # micro-batch targets (shifted): 5, 59, 10, 40


def clm_examples() -> list[list[int]]:
    g = torch.Generator().manual_seed(1)
    return [torch.randint(1, VOCAB, (n,), generator=g).tolist() for n in LENGTHS]


def test_causal_lm_accumulation_equals_big_batch_with_uneven_targets():
    objective = CLMObjective(tokenizer=SimpleNamespace(pad_id=PAD, eos_id=PAD))
    examples = clm_examples()
    big = objective(examples)  # one batch of 8, padded to 31
    micro = [objective(examples[i : i + 2]) for i in range(0, 8, 2)]  # each padded to its own width
    model = tiny("causal")
    assert model.shift_labels

    counts = [count_targets(model, b["labels"]) for b in micro]
    assert counts == [(a - 1) + (b - 1) for a, b in zip(LENGTHS[::2], LENGTHS[1::2])]  # shift drops one
    assert len(set(counts)) == 4 and max(counts) > 5 * min(counts)  # really uneven

    want = reference_grads(model, big)
    got, loss = accumulated_grads(model, micro)
    assert_same(got, want)
    with torch.no_grad():
        assert loss == pytest.approx(float(model(**big).loss), abs=1e-6)  # the step's loss is the big batch's
    # the check has teeth: unweighted averaging of micro-batch losses is visibly wrong here
    naive = naive_grads(model, micro)
    assert max(float((n - w).abs().max()) for n, w in zip(naive, want)) > 1e-4


def test_causal_lm_accumulation_equals_big_batch_after_clipping():
    objective = CLMObjective(tokenizer=SimpleNamespace(pad_id=PAD, eos_id=PAD))
    examples = clm_examples()
    model = tiny("causal")
    want = reference_grads(model, objective(examples), clip_grad=0.05)
    got, _ = accumulated_grads(
        model, [objective(examples[i : i + 2]) for i in range(0, 8, 2)], clip_grad=0.05
    )
    assert_same(got, want)


# ---- MaskedLM / PrefixLM: labels with different numbers of -100 -------------------------------------
TARGETS_PER_ROW = [1, 2, 9, 12, 3, 1, 5, 16]  # micro-batch targets: 3, 21, 4, 21


def masked_batch(t: int = 16) -> dict:
    g = torch.Generator().manual_seed(2)
    input_ids = torch.randint(1, VOCAB, (8, t), generator=g)
    labels = torch.full_like(input_ids, -100)
    for row, n in enumerate(TARGETS_PER_ROW):
        where = torch.randperm(t, generator=g)[:n]
        labels[row, where] = input_ids[row, where]
        input_ids[row, where] = 1  # a stand-in [MASK] id
    attention_mask = torch.ones_like(input_ids)
    attention_mask[5, 12:] = 0  # some padding too
    labels[5, 12:] = -100
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


@pytest.mark.parametrize("family", ["masked", "prefix"])
def test_unshifted_lm_accumulation_equals_big_batch_with_uneven_targets(family):
    model = tiny(family)
    assert not model.shift_labels
    big = masked_batch()
    micro = split(big)
    counts = [count_targets(model, b["labels"]) for b in micro]
    assert counts == [int((b["labels"] != -100).sum()) for b in micro]
    assert sum(counts) == count_targets(model, big["labels"]) and max(counts) > 5 * min(counts)
    got, _ = accumulated_grads(model, micro)
    assert_same(got, reference_grads(model, big))
    assert (
        max(
            float((n - w).abs().max()) for n, w in zip(naive_grads(model, micro), reference_grads(model, big))
        )
        > 1e-4
    )


# ---- Seq2SeqLM: decoder labels of different lengths ---------------------------------------------
def test_seq2seq_accumulation_equals_big_batch_with_uneven_targets():
    model = tiny("seq2seq")
    g = torch.Generator().manual_seed(3)
    input_ids = torch.randint(2, VOCAB, (8, 12), generator=g)
    labels = torch.randint(2, VOCAB, (8, 10), generator=g)
    for row, n in enumerate([1, 2, 10, 9, 3, 1, 6, 8]):  # micro-batch targets: 3, 19, 4, 14
        labels[row, n:] = -100
    big = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels}
    got, _ = accumulated_grads(model, split(big))
    assert_same(got, reference_grads(model, big))


def test_count_targets():
    labels = torch.tensor([[5, 6, -100, -100], [-100, 7, 8, 9]])
    causal, masked = tiny("causal"), tiny("masked")
    assert count_targets(masked, labels) == 5
    assert count_targets(causal, labels) == 4  # position 0 is never a target after the shift
    assert count_targets(causal, None) == 1


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")
def test_micro_batch_without_targets_contributes_nothing():
    model = tiny("masked")
    big = masked_batch()
    big["labels"][2:4] = -100  # micro-batch 1 has no targets at all
    micro = split(big)
    assert count_targets(model, micro[1]["labels"]) == 0
    got, loss = accumulated_grads(model, micro)
    assert loss == loss, "the step was skipped as non-finite"
    assert_same(got, reference_grads(model, big))


# ---- end to end: the recipe loop with accumulation 4 x 2 follows the batch-8 run ----------------
def test_recipe_with_accumulation_4x2_follows_the_batch_8_run(tmp_path):
    import io

    import train_helpers as h
    from plmkit.config import load_config
    from plmkit.recipes.pretrain import pretrain
    from plmkit.tokenizer import Tokenizer

    recipe = h.ROOT / "recipes" / "gpt-clm.yaml"
    corpus = h.write_english(tmp_path / "en.txt", 20_000)
    Tokenizer.train([corpus.read_text(encoding="utf-8")], kind="bpe", vocab_size=400).save(tmp_path / "tok")
    results, losses = {}, {}
    for name, sizes in {
        "big": ["train.batch_size=8"],
        "acc": ["train.batch_size=2", "train.accumulation=4"],
    }.items():
        overrides = h.tiny_overrides(recipe, corpus, tmp_path, steps=8) + [
            f"tokenizer.path={tmp_path / 'tok'}",
            f"out_dir={tmp_path / name}",
            "optim.lr=1e-2",
            "eval.batches=1000",
            *sizes,  # all validation blocks, whatever the batch size
        ]
        results[name] = pretrain(load_config(RecipeConfig, recipe, overrides), stream=io.StringIO())
        losses[name] = h.losses_by_step(tmp_path / name)
    assert sorted(losses["acc"]) == list(range(1, 9))
    for step in range(1, 9):  # the same 8 blocks per step, the same update (to float rounding)
        assert losses["acc"][step] == pytest.approx(losses["big"][step], abs=1e-5), step
    assert results["acc"]["tokens"] == results["big"]["tokens"] == 8 * 8 * 32
    assert results["acc"]["val_loss"] == pytest.approx(results["big"]["val_loss"], abs=1e-5)
