"""QLoRA: LoRA on a frozen int8 / NF4 base (plmkit.quant + plmkit.peft). Only the LoRA factors train, the
base's bytes never change, a small task is learned, gradient checkpointing gives the same gradients,
adapters save and load onto a quantized base, and merging requantizes with the logits change reported
(or refused), never silently."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

import plmkit
import train_helpers as h
from plmkit import peft
from plmkit.errors import ConfigError
from plmkit.model import build_model
from plmkit.peft.lora import LoRALinear
from plmkit.peft.qlora import probe_batch, probe_logits
from plmkit.quant import QuantLinear, quantize
from plmkit.train.config import OptimConfig
from plmkit.train.optim import build_optimizer

SEQ = torch.randint(0, 256, (1, 24), generator=torch.Generator().manual_seed(5)).repeat(4, 1)  # to memorise


def base() -> torch.nn.Module:
    # initializer_range 0.1: the frozen (tied) embeddings must allow confident logits for LoRA to fit SEQ
    torch.manual_seed(0)
    return build_model(
        "gpt2-tiny",
        vocab_size=256,
        d_model=64,
        n_layer=2,
        n_head=4,
        d_ff=128,
        dropout=0.0,
        max_positions=64,
        initializer_range=0.1,
    )


def train(model: torch.nn.Module, steps: int, lr: float = 1e-2) -> list[float]:
    optimizer = build_optimizer(model, OptimConfig(lr=lr, weight_decay=0.0), torch.device("cpu"))
    model.train()
    losses = []
    for _ in range(steps):
        loss = model(SEQ, labels=SEQ).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


@pytest.fixture(scope="module")
def qlora_int8():
    """A QLoRA model (int8 base, LoRA r=8 on every block Linear) trained on SEQ: (model, base state)."""
    model = quantize(base(), "int8")
    frozen = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    model = peft.apply(model, "lora", r=8, target="all-linear")
    train(model, 50)
    return model.eval(), frozen


@pytest.mark.parametrize("mode", ["int8", "int8-dynamic", "nf4"])
def test_qlora_trains_only_lora_keeps_the_base_bitwise_and_learns(mode):
    model = quantize(base(), mode)
    frozen = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    model = peft.apply(model, "lora", r=8, target="all-linear")
    wrapped = [m for n, m in model.named_modules() if isinstance(m, LoRALinear)]
    assert len(wrapped) == 8 and all(m.quant is not None for m in wrapped)  # qkv, out, fc_in, fc_out x 2
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    losses = train(model, 50)
    assert losses[0] > 5.0 and losses[-1] < 1.0, (losses[0], losses[-1])
    state = model.state_dict()
    for name, tensor in frozen.items():  # same names as the quantized base, same bytes
        assert torch.equal(state[name], tensor), name
    assert state["transformer.blocks.0.attn.qkv.weight"].dtype == (
        torch.uint8 if mode == "nf4" else torch.int8
    )


def test_qlora_with_gradient_checkpointing_gives_the_same_gradients():
    for mode in ("int8", "nf4"):
        plain = peft.apply(quantize(base(), mode), "lora", r=4, target="all-linear")
        with torch.no_grad():  # non-zero B: gradients reach every A, through the frozen quantized layers
            for name, param in plain.named_parameters():
                if ".lora_B." in name:
                    param.normal_(0, 0.02)
        checkpointed = copy.deepcopy(plain)
        checkpointed.set_gradient_checkpointing(True)
        losses = []
        for model in (plain, checkpointed):
            model.train()
            loss = model(SEQ, labels=SEQ).loss
            loss.backward()
            losses.append(loss.item())
        assert losses[0] == pytest.approx(losses[1], abs=1e-6)
        grads = {n: p.grad for n, p in checkpointed.named_parameters() if p.requires_grad}
        for name, param in plain.named_parameters():
            if param.requires_grad:
                assert param.grad is not None and param.grad.abs().sum() > 0, name
                assert torch.allclose(param.grad, grads[name], atol=1e-6), name


def test_qlora_under_bf16_autocast():
    """The trainer's CPU default on AVX512-BF16 machines: quantized layers compute in the autocast dtype."""
    model = peft.apply(quantize(base(), "int8"), "lora", r=4, target="all-linear").train()
    with torch.no_grad():
        fp32_loss = model(SEQ, labels=SEQ).loss.item()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(SEQ, labels=SEQ).loss
    loss.backward()
    assert loss.item() == pytest.approx(fp32_loss, rel=0.02)
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_adapter_saved_from_qlora_loads_onto_a_reloaded_quantized_base(qlora_int8, tmp_path):
    model, frozen = qlora_int8
    peft.save_adapter(model, tmp_path / "adapter")
    plmkit.save(quantize(base(), "int8"), None, tmp_path / "base")
    reloaded, _ = plmkit.load(tmp_path / "base")
    assert all(torch.equal(reloaded.state_dict()[n], t) for n, t in frozen.items())
    restored = peft.load_adapter(reloaded, tmp_path / "adapter")
    with torch.no_grad():
        assert torch.equal(restored(SEQ).logits, model(SEQ).logits)
    # the same adapter on the float base: the model QLoRA approximates
    on_float = peft.load_adapter(base(), tmp_path / "adapter").eval()
    with torch.no_grad():
        assert (on_float(SEQ).logits - model(SEQ).logits).abs().max() < 0.5


def test_merge_into_a_quantized_base_reports_the_logits_change(qlora_int8):
    model = copy.deepcopy(qlora_int8[0])
    probe = probe_batch(model)
    before = probe_logits(model, probe)
    with pytest.warns(UserWarning, match=r"dequantize -> merge -> requantize: max \|logits change\|"):
        peft.merge(model)
    report = model.merge_report
    assert report.mode == "int8" and report.layers == 8 and report.probe_shape == (2, 16)
    measured = (probe_logits(model, probe) - before).abs().max().item()
    assert report.max_logits_error == pytest.approx(measured) and 0 < measured < 0.2 * report.max_logits
    with pytest.raises(ConfigError, match="cannot unmerge LoRA from a quantized base"):
        peft.unmerge(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        merged = peft.merge(model, unload=True)
    assert isinstance(merged.transformer.blocks[0].attn.qkv, QuantLinear)
    assert not any(p.requires_grad for p in merged.parameters())  # still a frozen quantized model
    with torch.no_grad():
        assert torch.allclose(probe_logits(merged, probe), before, atol=report.max_logits_error + 1e-6)


def test_merge_refused_above_max_logits_error_leaves_the_model_untouched(qlora_int8):
    model = copy.deepcopy(qlora_int8[0])
    state = {n: t.clone() for n, t in model.state_dict().items()}
    with pytest.raises(ConfigError, match="would change the logits by up to .* left unmerged"):
        peft.merge(model, max_logits_error=1e-9)
    assert all(torch.equal(model.state_dict()[n], t) for n, t in state.items())
    assert not any(m.merged for m in model.modules() if isinstance(m, LoRALinear))
    with torch.no_grad():
        assert torch.equal(model(SEQ).logits, qlora_int8[0](SEQ).logits)


def test_plm_merge_lora_on_a_quantized_base(qlora_int8, tmp_path, capsys):
    model, _ = qlora_int8
    peft.save_adapter(model, tmp_path / "adapter")
    plmkit.save(quantize(base(), "int8"), None, tmp_path / "base")
    argv = [
        "merge-lora",
        "--base",
        tmp_path / "base",
        "--adapter",
        tmp_path / "adapter",
        "--out",
        tmp_path / "m",
    ]
    code, out, err = h.run_cli(argv, capsys)
    assert code == 0, err
    assert "requantize: max |logits change|" in out
    merged, _ = plmkit.load(tmp_path / "m")
    assert merged.quant_config.mode == "int8" and isinstance(
        merged.transformer.blocks[1].mlp.fc_out, QuantLinear
    )
    code, _, err = h.run_cli([*argv[:-1], tmp_path / "m2", "--max-logits-error", "0"], capsys)
    assert code == 2 and err.startswith("error: ") and "left unmerged" in err and err.count("\n") == 1
    assert not (tmp_path / "m2").exists()


def test_qlora_on_a_llama_base_without_biases():
    torch.manual_seed(0)
    llama = build_model(
        "llama-tiny", vocab_size=256, d_model=64, n_layer=2, n_head=4, n_kv_head=2, d_ff=128, max_positions=64
    )
    model = peft.apply(quantize(llama, "nf4"), "lora", r=4, target="attn.q,attn.v,mlp.gate,mlp.up,mlp.fc_out")
    assert model.transformer.blocks[0].mlp.fc_in.bias is None
    losses = train(model, 3)
    assert losses[-1] < losses[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        merged = peft.merge(model, unload=True)
    assert (
        isinstance(merged.transformer.blocks[0].mlp.fc_in, QuantLinear)
        and merged.lm_head.decoder.bias is None
    )


def test_part_targets_and_adapters_on_a_quantized_base():
    reference = quantize(base(), "nf4").eval()
    with torch.no_grad():
        expected = reference(SEQ).logits
    for method, options in (("lora", {"target": "attn.q,attn.v"}), ("adapter", {"kind": "houlsby"})):
        model = peft.apply(copy.deepcopy(reference), method, **options)
        with torch.no_grad():  # LoRA's B and the adapters' up projections start at zero
            assert torch.equal(model(SEQ).logits, expected), method
        new = [p for n, p in model.named_parameters() if p.requires_grad]
        assert new and all(p.dtype == torch.float32 for p in new)  # made in the base's float dtype
    with pytest.raises(ConfigError, match="LM head"):
        peft.apply(copy.deepcopy(reference), "lora", target="lm_head.decoder")
