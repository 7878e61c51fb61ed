"""LoRA: unchanged outputs at initialisation, exact merge/unmerge, frozen base, target patterns, errors."""

from __future__ import annotations

import math

import pytest
import torch

import plmkit.peft as peft
from plmkit.errors import ConfigError, PlmkitError
from plmkit.model import (
    ModelConfig,
    RewardModel,
    SequenceClassifier,
    SpanQA,
    TokenClassifier,
    TransformerModel,
    build_model,
)
from plmkit.peft.lora import LoRALinear
from tiny import ARCHS, VOCAB
from tiny import SIZES as TINY

HEADS = {
    "seq-cls": lambda c: SequenceClassifier(c, num_labels=3),
    "token-cls": lambda c: TokenClassifier(c, num_labels=5),
    "span-qa": SpanQA,
    "reward": RewardModel,
    "encoder": lambda c: TransformerModel(c, pooler=True),
}


def make(arch: str = "gpt2", head: str | None = None, seed: int = 0, **overrides) -> torch.nn.Module:
    torch.manual_seed(seed)
    config = ModelConfig(**{**TINY, **ARCHS[arch], **overrides})
    model = HEADS[head](config) if head else build_model(config)
    with torch.no_grad():  # move every norm weight / bias away from 1 / 0 so a wrong mapping shows
        for name, param in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                param.add_(torch.randn_like(param) * 0.1)
    return model.eval()


def outputs(model) -> torch.Tensor:
    """The main output of any plmkit model on a fixed right-padded batch."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, VOCAB, (2, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[1, -2:] = 0
    family = model.config.family
    name = type(getattr(model, "base", model)).__name__
    if family == "seq2seq":
        return model(input_ids=ids, attention_mask=mask, decoder_input_ids=ids[:, :5]).logits
    kwargs = {"prefix_lengths": torch.tensor([3, 4])} if family == "prefix" and name == "PrefixLM" else {}
    out = model(ids, attention_mask=mask, **kwargs)
    if name == "SpanQA":
        return torch.stack((out.start_logits, out.end_logits))
    if name == "RewardModel":
        return out.scores
    if name == "TransformerModel":
        return torch.cat((out.hidden_states.flatten(), out.pooled.flatten()))
    return out.logits


def randomize_lora(model, std: float = 0.1) -> None:
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".lora_B." in name:
                param.normal_(0.0, std)


CASES = [(arch, None) for arch in ARCHS] + [("gpt2", head) for head in HEADS] + [("bert", "seq-cls")]


@pytest.mark.parametrize(("arch", "head"), CASES)
def test_lora_starts_exactly_at_the_base_and_merges_exactly(arch, head):
    model = make(arch, head)
    with torch.no_grad():
        base_out = outputs(model)
    base_weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    model = peft.apply(model, "lora", r=4, target="all-linear", train_head=False)
    with torch.no_grad():
        assert torch.equal(outputs(model), base_out)  # B = 0: bit-for-bit the base model
        randomize_lora(model)
        unmerged = outputs(model)
        assert (unmerged - base_out).abs().max() > 1e-3  # the update does something
        peft.merge(model)
        assert torch.allclose(outputs(model), unmerged, atol=1e-5, rtol=0)
        peft.unmerge(model)
        assert torch.allclose(outputs(model), unmerged, atol=1e-5, rtol=0)
    for name, param in model.named_parameters():
        if name in base_weights:
            assert torch.allclose(param, base_weights[name], atol=1e-6, rtol=0), name


@pytest.mark.parametrize("arch", ["gpt2", "llama", "bart"])
def test_part_targets_update_only_their_rows_and_merge_exactly(arch):
    model = make(arch)
    target = "attn.q,attn.v" + (",cross_attn.k,cross_attn.v" if arch == "bart" else "")
    target += ",mlp.up" if arch == "llama" else ""
    peft.apply(model, "lora", r=2, alpha=4, target=target)
    randomize_lora(model)
    qkv = model.get_submodule(
        "decoder.blocks.0.attn.qkv" if arch == "bart" else "transformer.blocks.0.attn.qkv"
    )
    assert isinstance(qkv, LoRALinear) and list(qkv.parts) == ["q", "v"]
    x = torch.randn(3, 32)
    delta = qkv(x) - qkv.base_forward(x)
    q, kv = 32, 32 if arch != "llama" else 16
    assert delta[:, :q].abs().max() > 0 and delta[:, q + kv :].abs().max() > 0
    assert torch.equal(delta[:, q : q + kv], torch.zeros_like(delta[:, q : q + kv]))  # k untouched
    with torch.no_grad():
        before = outputs(model)
        peft.merge(model)
        assert torch.allclose(outputs(model), before, atol=1e-5, rtol=0)


def test_scaling_alpha_over_r_and_rslora():
    model = make()
    peft.apply(model, "lora", r=4, alpha=8)
    assert model.transformer.blocks[0].attn.qkv.scaling == 2.0
    model = make()
    peft.apply(model, "lora", r=4, alpha=8, rslora=True)
    assert model.transformer.blocks[0].attn.qkv.scaling == 8 / math.sqrt(4)
    model = make()
    peft.apply(model, "lora", r=4)  # default alpha = 2r
    assert model.transformer.blocks[0].attn.qkv.scaling == 2.0


def test_base_parameter_names_are_kept():
    model = make("llama")
    names = set(model.state_dict())
    peft.apply(model, "lora", r=2, target="all-linear")
    new = set(model.state_dict())
    assert names <= new  # the wrapped Linears keep `weight` / `bias` under the same names
    assert {n for n in new - names} == {n for n in new if ".lora_" in n}


def test_training_changes_only_lora_and_learns():
    # a random base with large weights (a tiny std leaves logits near uniform whatever LoRA does)
    model = make("llama", initializer_range=0.3).train()
    model = peft.apply(model, "lora", r=4, alpha=8, target="all-linear")
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and frozen
    # the task: each next token is the current one + 1
    start = torch.randint(3, VOCAB, (8, 1), generator=torch.Generator().manual_seed(2))
    ids = (start + torch.arange(12)) % VOCAB
    optimizer = torch.optim.AdamW(trainable, lr=1e-2, weight_decay=0.1)
    losses = []
    for _ in range(40):
        loss = model(ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0], losses
    for name, param in model.named_parameters():
        if name in frozen:
            assert torch.equal(param, frozen[name]), f"{name} changed"


# gradient checkpointing: test_peft_checkpointing.py


def test_classifier_head_trains_in_full_by_default():
    model = peft.apply(make("gpt2", "seq-cls"), "lora", r=2)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {"classifier.weight", "classifier.bias"} <= trainable
    assert all(".lora_" in n or n.startswith("classifier.") for n in trainable)


def test_targets_by_suffix_glob_and_all_linear():
    model = peft.apply(make("bart"), "lora", target="encoder.blocks.*.attn.out, mlp.fc_in")
    wrapped = sorted(n for n, m in model.named_modules() if isinstance(m, LoRALinear))
    assert wrapped == sorted(
        [f"encoder.blocks.{i}.attn.out" for i in range(2)]
        + [f"{s}.blocks.{i}.mlp.fc_in" for s in ("encoder", "decoder") for i in range(2)]
    )
    model = peft.apply(make("bart"), "lora", target="all-linear")
    wrapped = {n for n, m in model.named_modules() if isinstance(m, LoRALinear)}
    assert len(wrapped) == 2 * 4 + 2 * 7  # encoder: qkv out fc_in fc_out; decoder adds cross q kv out
    assert not any("lm_head" in n for n in wrapped)
    model = peft.apply(make("gpt2", "seq-cls"), "lora", target="all-linear")
    assert not isinstance(model.classifier, LoRALinear)
    model = peft.apply(make("gpt2", "seq-cls"), "lora", target=["classifier"], train_head=False)
    assert isinstance(model.classifier, LoRALinear)


def test_a_target_that_matches_nothing_lists_the_modules():
    with pytest.raises(ConfigError) as info:
        peft.apply(make("gpt2"), "lora", target="attn.qvk")
    message = str(info.value)
    assert 'lora target "attn.qvk" matches no Linear module' in message
    assert 'did you mean "attn.qkv"' in message
    for name in ("attn.qkv", "attn.out", "mlp.fc_in", "mlp.fc_out", "attn.q", "attn.v"):
        assert name in message
    assert isinstance(info.value, PlmkitError)


@pytest.mark.parametrize(
    ("target", "words"),
    [
        ("lm_head.decoder", "LM head"),
        ("attn.qkv,attn.q", "not both"),
        ("", "empty"),
    ],
)
def test_bad_targets_are_refused(target, words):
    with pytest.raises(ConfigError, match=words):
        peft.apply(make("gpt2"), "lora", target=target)


def test_bad_options_and_methods_are_refused():
    with pytest.raises(ConfigError, match='did you mean "alpha"'):
        peft.apply(make(), "lora", alpah=4)
    with pytest.raises(ConfigError, match="positive integer"):
        peft.apply(make(), "lora", r=0)
    with pytest.raises(ConfigError, match='did you mean "lora"'):
        peft.apply(make(), "loar")
    model = peft.apply(make(), "lora")
    with pytest.raises(ConfigError, match="already carries lora"):
        peft.apply(model, "bitfit")
    with pytest.raises(ConfigError, match="no PEFT method"):
        peft.merge(make())


def test_merge_and_unload_gives_a_plain_model():
    model = make("llama")
    peft.apply(model, "lora", r=2, target="all-linear")
    randomize_lora(model)
    with torch.no_grad():
        expected = outputs(model)
    peft.merge(model, unload=True)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    assert not hasattr(model, "peft_config")
    assert set(model.state_dict()) == set(make("llama").state_dict())
    with torch.no_grad():
        assert torch.allclose(outputs(model), expected, atol=1e-5, rtol=0)


def test_trainable_report():
    model = peft.apply(make(), "lora", r=4, target="attn.qkv")
    trainable = 2 * (4 * 32 + 96 * 4)
    total = sum(p.numel() for p in model.parameters())
    assert (
        peft.trainable_report(model)
        == f"trainable: {trainable:,} / total: {total:,} ({100 * trainable / total:.4g}%)"
    )


def test_a_wildcard_over_a_fused_module_and_its_parts_takes_the_whole_module():
    model = peft.apply(make("llama"), "lora", target="blocks.0.attn.*,attn.qkv")
    qkv = model.transformer.blocks[0].attn.qkv
    assert isinstance(qkv, LoRALinear) and list(qkv.parts) == ["all"]
    assert isinstance(model.transformer.blocks[0].attn.out, LoRALinear)
    assert not isinstance(model.transformer.blocks[1].attn.out, LoRALinear)


@pytest.mark.parametrize("method", ["lora", "adapter", "prefix", "prompt"])
def test_apply_keeps_the_models_train_or_eval_mode(method):
    options = {
        "lora": dict(dropout=0.5),
        "adapter": {},
        "prefix": dict(n_tokens=2),
        "prompt": dict(n_tokens=2),
    }
    model = peft.apply(make("gpt2", dropout=0.5), method, **options[method])  # make() gives eval mode
    assert not any(m.training for m in model.modules())
    assert torch.equal(outputs(model), outputs(model))  # no dropout: deterministic
    model = peft.apply(make("gpt2").train(), method, **options[method])
    assert all(m.training for m in model.modules())
