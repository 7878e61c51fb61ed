"""ELECTRA: the masking collator and the generator + discriminator pre-training objective."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from plmkit.data.objectives import build_objective
from plmkit.data.objectives.electra import ElectraObjective
from plmkit.errors import ConfigError
from plmkit.model import MaskedLM, ModelConfig
from plmkit.model.electra import ElectraPretrainer, build_electra
from zh_tokenizer import COMMON, zh_char_tokenizer


@pytest.fixture(scope="module")
def tok():
    return zh_char_tokenizer()


def random_text(tok, n: int, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return [tok.token_to_id(COMMON[c]) for c in torch.randint(len(COMMON), (n,), generator=g).tolist()]


def tiny_electra(tok, **kwargs) -> ElectraPretrainer:
    torch.manual_seed(0)
    config = ModelConfig(
        family="masked",
        vocab_size=tok.vocab_size,
        d_model=32,
        n_layer=2,
        n_head=4,
        d_ff=64,
        max_positions=64,
        pad_token_id=tok.pad_id,
    )
    return build_electra(config, **kwargs)


def batch_of(tok, seed: int = 0, n: int = 4, length: int = 24):
    objective = ElectraObjective(tok, seed=seed, mlm_probability=0.3)
    return objective([random_text(tok, length - 3 * i, seed * 100 + i) for i in range(n)])


def test_collator_uses_electra_masking(tok):
    objective = build_objective("electra", tok, seed=0)
    assert (objective.mlm_probability, objective.mask_replace_prob, objective.random_replace_prob) == (
        0.15,
        0.85,
        0.0,
    )
    examples = [random_text(tok, 100, s) for s in range(200)]
    batch = objective(examples)
    selected = batch["labels"] != -100
    assert abs(selected.float().mean() - 0.15) < 0.01
    masked = batch["input_ids"][selected] == tok.mask_id
    assert abs(masked.float().mean() - 0.85) < 0.02
    original = torch.tensor(examples)
    kept = batch["input_ids"] != tok.mask_id
    assert torch.equal(batch["input_ids"][kept], original[kept])  # no random replacements
    assert torch.equal(batch["labels"][selected], original[selected])


def test_embeddings_are_tied(tok):
    model = tiny_electra(tok)
    gen, disc = model.generator.transformer.embed, model.discriminator.transformer.embed
    assert gen.tokens.weight is disc.tokens.weight
    assert gen.positions.weight is disc.positions.weight
    assert model.generator.lm_head.decoder.weight is disc.tokens.weight
    params = list(model.parameters())  # each shared Parameter is listed (and optimized) once
    assert sum(p is disc.tokens.weight for p in params) == 1
    # the generator is smaller: fewer layers, heads and MLP width, same width
    assert model.generator.config.d_model == model.discriminator.config.d_model
    assert len(model.generator.transformer.blocks) == 1 and model.generator.config.n_head == 1
    assert model.generator.config.d_ff == 16


def test_replacements_counted_and_losses_exact(tok):
    model = tiny_electra(tok)
    batch = batch_of(tok)
    out = model(**batch)
    masked = batch["labels"] != -100
    original = torch.where(masked, batch["labels"], batch["input_ids"])
    real = batch["attention_mask"].bool()
    # the discriminator input differs from the collator's only at masked positions
    assert torch.equal(out.corrupted_ids[~masked], batch["input_ids"][~masked])
    assert torch.equal(out.replaced, (out.corrupted_ids != original) & real)
    assert not (out.replaced & ~masked).any()
    assert out.num_replaced == int(out.replaced.sum()) > 0 and out.num_masked == int(masked.sum())
    # loss = mlm + 50 * disc exactly, and each part is what it says
    assert torch.equal(out.loss, out.generator_loss + 50 * out.discriminator_loss)
    mlm = MaskedLM(model.generator.config)
    mlm.load_state_dict(model.generator.state_dict())
    torch.testing.assert_close(
        out.generator_loss,
        mlm(batch["input_ids"], batch["attention_mask"], labels=batch["labels"]).loss,
        rtol=1e-5,
        atol=1e-6,
    )
    disc = F.binary_cross_entropy_with_logits(out.logits[real], out.replaced[real].float())
    torch.testing.assert_close(out.discriminator_loss, disc, rtol=0, atol=0)
    assert 0.0 <= out.discriminator_accuracy <= 1.0 and 0.0 <= out.generator_accuracy <= 1.0


def test_sampled_original_is_not_replaced(tok):
    model = tiny_electra(tok)
    batch = batch_of(tok, seed=1)
    masked = batch["labels"] != -100
    originals = batch["labels"][masked]
    model.sample = lambda logits: originals  # the generator "predicts" every original token
    out = model(**batch)
    assert out.num_masked > 0 and out.num_replaced == 0 and not out.replaced.any()
    assert torch.equal(out.corrupted_ids, torch.where(masked, batch["labels"], batch["input_ids"]))
    # half right, half wrong: exactly the wrong half is labelled replaced
    wrong = torch.arange(len(originals)) % 2 == 1
    guesses = torch.where(wrong, (originals + 1) % tok.vocab_size, originals)
    model.sample = lambda logits: guesses
    out = model(**batch)
    assert out.num_replaced == int(wrong.sum())
    assert torch.equal(out.replaced[masked], wrong)


def test_sampling_is_seeded(tok):
    batch = batch_of(tok, seed=2)
    a = tiny_electra(tok, seed=7)(**batch)
    b = tiny_electra(tok, seed=7)(**batch)
    assert torch.equal(a.corrupted_ids, b.corrupted_ids)
    gen = torch.Generator().manual_seed(3)
    model = tiny_electra(tok)
    model.sampling_generator = gen
    model(**batch)
    assert not torch.equal(gen.get_state(), torch.Generator().manual_seed(3).get_state())  # it was used


def test_training_lowers_the_loss(tok):
    model = tiny_electra(tok)
    batch = batch_of(tok, seed=3, n=8)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses, mlm_losses = [], []
    for _ in range(30):
        out = model(**batch)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        losses.append(out.loss.item())
        mlm_losses.append(out.generator_loss.item())
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5
    assert sum(mlm_losses[-5:]) / 5 < 0.9 * sum(mlm_losses[:5]) / 5


def test_no_masked_token_and_errors(tok):
    model = tiny_electra(tok)
    ids = torch.tensor([random_text(tok, 10, 0)])
    out = model(ids, torch.ones_like(ids), torch.full_like(ids, -100))
    assert out.num_masked == 0 and out.generator_loss == 0 and torch.isfinite(out.loss)
    out.loss.backward()
    with pytest.raises(ConfigError, match="labels"):
        model(ids)
    gen = MaskedLM(
        ModelConfig(family="masked", vocab_size=tok.vocab_size, d_model=16, n_layer=1, n_head=2, d_ff=32)
    )
    with pytest.raises(ConfigError, match="d_model"):
        ElectraPretrainer(gen, model.discriminator)
