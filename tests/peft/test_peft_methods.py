"""Adapters, BitFit and prompt tuning: outputs at initialisation, what trains, learning, checkpointing."""

from __future__ import annotations

import pytest
import torch

import plmkit.peft as peft
from plmkit.errors import ConfigError
from plmkit.generation import generate_ids
from plmkit.model import ModelConfig, SequenceClassifier, TokenClassifier, build_model
from plmkit.peft.adapter import AdapterLinear
from tiny import ARCHS, VOCAB
from tiny import SIZES as TINY


def make(arch: str = "gpt2", head: str | None = None, **overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    config = ModelConfig(**{**TINY, **ARCHS[arch], **overrides})
    if head == "seq-cls":
        return SequenceClassifier(config, num_labels=3, pooling="last").eval()
    if head == "token-cls":
        return TokenClassifier(config, num_labels=4).eval()
    return build_model(config).eval()


def batch(seed: int = 1, length: int = 9) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(3, VOCAB, (2, length), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones_like(ids)
    mask[1, -2:] = 0
    return ids, mask


@torch.no_grad()
def logits(model, ids: torch.Tensor, mask: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
    if model.config.family == "seq2seq":
        decoder_ids = torch.tensor([[1, 7, 3, 9, 4], [1, 2, 8, 5, 6]])
        return model(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids, **kwargs).logits
    if model.config.family == "prefix" and "prefix_lengths" not in kwargs:
        kwargs["prefix_lengths"] = torch.tensor([3, 4])
    return model(ids, attention_mask=mask, **kwargs).logits


def frozen_copy(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}


def assert_unchanged(model, frozen: dict[str, torch.Tensor]) -> None:
    for name, param in model.named_parameters():
        if name in frozen:
            assert torch.equal(param, frozen[name]), f"{name} changed"


# ---- adapters --------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["houlsby", "pfeiffer"])
@pytest.mark.parametrize("arch", list(ARCHS))
def test_adapters_start_as_the_identity(arch, kind):
    model = make(arch)
    ids, mask = batch()
    expected = logits(model, ids, mask)
    model = peft.apply(model, "adapter", kind=kind, size=8)
    assert torch.equal(logits(model, ids, mask), expected)
    wrapped = {
        n.split("blocks.")[-1].split(".", 1)[1]
        for n, m in model.named_modules()
        if isinstance(m, AdapterLinear)
    }
    if kind == "pfeiffer":
        assert wrapped == {"mlp.fc_out"}
    else:
        assert wrapped == {"attn.out", "mlp.fc_out"} | (
            {"cross_attn.out"} if "bart" in arch or "t5" in arch else set()
        )


def test_adapter_options():
    model = peft.apply(make(), "adapter", reduction=4)
    adapter = model.transformer.blocks[0].mlp.fc_out.adapter
    assert adapter.down.out_features == 32 // 4
    for bad, words in (
        (dict(kind="lora"), "kind"),
        (dict(size=0), "positive"),
        (dict(activation="tanh"), "activation"),
    ):
        with pytest.raises(ConfigError, match=words):
            peft.apply(make(), "adapter", **bad)
    with pytest.raises(ConfigError, match="only LoRA can be merged"):
        peft.merge(model)


# gradient checkpointing for every method: test_peft_checkpointing.py


# ---- BitFit ----------------------------------------------------------------------------------------
def test_bitfit_trains_biases_only():
    model = make("bert")
    ids, mask = batch()
    expected = logits(model, ids, mask)
    model = peft.apply(model, "bitfit")
    assert torch.equal(logits(model, ids, mask), expected)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.endswith(".bias") for n in trainable)
    assert len(trainable) == sum(1 for n, _ in model.named_parameters() if n.endswith(".bias"))


def test_bitfit_with_a_classifier_trains_the_head_and_refuses_models_without_biases():
    model = peft.apply(make("gpt2", "seq-cls"), "bitfit")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "classifier.weight" in trainable and all(
        n.endswith(".bias") or n.startswith("classifier.") for n in trainable
    )
    with pytest.raises(ConfigError, match="no bias terms"):
        peft.apply(make("llama"), "bitfit")


# ---- prompt tuning ---------------------------------------------------------------------------------
def prompt_from_ids(model, prompt_ids: list[int]):
    """A prompt whose embeddings are those of real tokens: then the prompt-tuned model must compute
    exactly what the base computes on those tokens followed by the input."""
    return peft.apply(model, "prompt", n_tokens=len(prompt_ids), init_ids=prompt_ids)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_prompt_acts_only_as_extra_input_tokens(arch):
    base = make(arch)
    ids, mask = batch()
    prompt_ids = [5, 9, 11]
    n = len(prompt_ids)
    ext_ids = torch.cat((torch.tensor([prompt_ids] * 2), ids), dim=1)
    ext_mask = torch.cat((torch.ones(2, n, dtype=torch.long), mask), dim=1)
    kwargs = {"prefix_lengths": torch.tensor([3 + n, 4 + n])} if arch == "unilm" else {}
    expected = logits(base, ext_ids, ext_mask, **kwargs)
    if base.config.family != "seq2seq":
        expected = expected[:, n:]
    model = prompt_from_ids(base, prompt_ids)
    kwargs = {"prefix_lengths": torch.tensor([3, 4])} if arch == "unilm" else {}
    assert torch.allclose(logits(model, ids, mask, **kwargs), expected, atol=1e-6, rtol=0)
    with torch.no_grad():  # another prompt changes the outputs
        model.prompt.embedding.add_(torch.randn_like(model.prompt.embedding))
    assert (logits(model, ids, mask, **kwargs) - expected).abs().max() > 1e-5


@pytest.mark.parametrize("head", ["seq-cls", "token-cls"])
def test_prompt_with_classification_heads(head):
    base = make("bert", head)
    ids, mask = batch()
    ext_ids = torch.cat((torch.tensor([[7, 8]] * 2), ids), dim=1)
    ext_mask = torch.cat((torch.ones(2, 2, dtype=torch.long), mask), dim=1)
    expected = logits(base, ext_ids, ext_mask)
    expected = expected[:, 2:] if head == "token-cls" else expected
    model = prompt_from_ids(base, [7, 8])
    assert torch.allclose(logits(model, ids, mask), expected, atol=1e-6, rtol=0)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"prompt.embedding", "base.classifier.weight", "base.classifier.bias"}
    labels = torch.tensor([0, 2]) if head == "seq-cls" else torch.randint(0, 4, ids.shape)
    model(ids, attention_mask=mask, labels=labels).loss.backward()
    assert model.prompt.embedding.grad is not None


def test_prompt_gradients_reach_only_the_prompt_and_labels_align():
    base = make("gpt2").train()
    model = peft.apply(base, "prompt", n_tokens=4)
    ids, mask = batch()
    out = model(ids, attention_mask=mask, labels=ids, compute_logits=True)
    assert out.logits.shape == (2, ids.shape[1], VOCAB)
    # the loss covers the same positions as the base model's loss: t predicts t+1 within the input
    expected = torch.nn.functional.cross_entropy(
        out.logits[:, :-1].reshape(-1, VOCAB), ids[:, 1:].reshape(-1)
    )
    assert torch.allclose(out.loss, expected, atol=1e-6)
    out.loss.backward()
    assert model.prompt.embedding.grad.abs().sum() > 0
    assert all(p.grad is None for n, p in model.named_parameters() if n != "prompt.embedding")


def test_prompt_generation_equals_generation_after_the_prompt_tokens():
    base = make("gpt2")
    ids = torch.randint(3, VOCAB, (2, 5), generator=torch.Generator().manual_seed(4))
    mask = torch.ones_like(ids)
    mask[0, :2] = 0  # left padding
    prompt_ids = [3, 4, 5]
    ext_ids = torch.cat((torch.tensor([prompt_ids] * 2), ids), dim=1)
    ext_mask = torch.cat((torch.ones(2, 3, dtype=torch.long), mask), dim=1)
    expected = generate_ids(base, ext_ids, ext_mask, max_new_tokens=6)
    model = prompt_from_ids(base, prompt_ids)
    assert torch.equal(generate_ids(model, ids, mask, max_new_tokens=6), expected)


def test_prompt_init_from_text_and_errors():
    class Tok:
        def encode(self, text, add_special_tokens=False):
            return [ord(c) % VOCAB for c in text]

    base = make()
    model = peft.apply(base, "prompt", n_tokens=5, init_text="ab", tokenizer=Tok())
    ids = [ord("a") % VOCAB, ord("b") % VOCAB] * 3
    assert torch.equal(model.prompt.embedding, base.transformer.embed.tokens.weight[ids[:5]])
    with pytest.raises(ConfigError, match="tokenizer"):
        peft.apply(make(), "prompt", init_text="ab")
    with pytest.raises(ConfigError, match="n_tokens"):
        peft.apply(make(), "prompt", n_tokens=0)
    with pytest.raises(ConfigError, match="init_ids"):
        peft.apply(make(), "prompt", init_ids=[VOCAB])
    with pytest.raises(ConfigError, match="nothing|only LoRA"):
        peft.merge(model)


# ---- learning, with the base frozen ----------------------------------------------------------------
METHODS = {
    "lora": ("gpt2", dict(r=4, target="all-linear"), 1e-2),
    "houlsby": ("llama", dict(kind="houlsby", size=8), 3e-2),
    "pfeiffer": ("gpt2", dict(kind="pfeiffer", size=8), 3e-2),
    "bitfit": ("bert", {}, 3e-2),
    "prompt": ("llama", dict(n_tokens=4), 1e-1),
}


@pytest.mark.parametrize("name", list(METHODS))
def test_each_method_learns_a_tiny_task_with_the_base_frozen(name):
    arch, options, lr = METHODS[name]
    method = "adapter" if name in ("houlsby", "pfeiffer") else name
    # large random weights: a tiny init std leaves the logits near uniform whatever the method does
    model = peft.apply(make(arch, initializer_range=0.3).train(), method, **options)
    frozen = frozen_copy(model)
    start = torch.randint(3, VOCAB, (8, 1), generator=torch.Generator().manual_seed(2))
    if name == "prompt":  # one sequence to recall: what a prompt can encode
        ids = (start[:1] * 7 + torch.arange(12) * 5).expand(8, 12) % VOCAB
    else:  # each next token is the current one + 1
        ids = (start + torch.arange(12)) % VOCAB
    labels = ids
    if arch == "bert":  # masked LM: predict position 5 from its neighbours
        ids, labels = ids.clone(), torch.full_like(ids, -100)
        labels[:, 5], ids[:, 5] = ids[:, 5], 0
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(40):
        loss = model(ids, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
    assert_unchanged(model, frozen)
