"""Round trip with the peft library: our LoRA, exported by export_peft next to the save_hf export of its
base, loaded by `peft.PeftModel.from_pretrained` on the transformers model, gives our logits (1e-4).
transformers and peft are test-only dependencies: without them this module is skipped."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import load_file

import plmkit.peft as peft
from plmkit.errors import ConfigError
from plmkit.model import ModelConfig, SequenceClassifier, build_model

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may download
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
transformers = pytest.importorskip("transformers", reason="needs transformers: pip install -e '.[dev]'")
peft_lib = pytest.importorskip("peft", reason="needs peft: pip install -e '.[dev]'")
transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()

VOCAB = 61
TINY = dict(vocab_size=VOCAB, d_model=32, n_layer=2, n_head=4, d_ff=64, max_positions=32)
ARCHS = {
    "gpt2": (dict(family="causal", activation="gelu_tanh"), "AutoModelForCausalLM"),
    "llama": (
        dict(
            family="causal",
            position="rotary",
            norm="rmsnorm",
            norm_eps=1e-6,
            gated_mlp=True,
            activation="silu",
            attention_bias=False,
            mlp_bias=False,
            n_kv_head=2,
            tie_embeddings=False,
        ),
        "AutoModelForCausalLM",
    ),
    "bart": (
        dict(
            family="seq2seq",
            n_decoder_layer=2,
            pre_norm=False,
            embedding_norm=True,
            final_norm=False,
            position_offset=2,
            pad_token_id=1,
            decoder_start_token_id=2,
        ),
        "AutoModelForSeq2SeqLM",
    ),
    "bert": (
        dict(
            family="masked",
            pre_norm=False,
            embedding_norm=True,
            final_norm=False,
            type_vocab_size=2,
            norm_eps=1e-12,
            lm_head_bias=True,
            lm_head_transform=True,
        ),
        "AutoModelForMaskedLM",
    ),
}
TARGETS = ["attn.qkv", "attn.q,attn.v", "attn.k,attn.out,mlp.fc_out", "all-linear"]


def make(arch: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(ModelConfig(**{**TINY, **ARCHS[arch][0]}))
    with torch.no_grad():  # norms and biases away from 1 / 0: a wrong mapping cannot hide
        for name, param in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                param.add_(torch.randn_like(param) * 0.1)
    return model.eval()


def tuned(arch: str, **options) -> torch.nn.Module:
    model = peft.apply(make(arch), "lora", **options)
    with torch.no_grad():  # trained-looking factors: B away from zero
        for name, param in model.named_parameters():
            if ".lora_B." in name:
                param.normal_(0.0, 0.2)
    return model


def compare(model, arch: str, tmp_path) -> None:
    peft.export_peft(model, tmp_path / "adapter", base_directory=tmp_path / "hf")
    reference = getattr(transformers, ARCHS[arch][1]).from_pretrained(tmp_path / "hf").eval()
    reference = peft_lib.PeftModel.from_pretrained(reference, tmp_path / "adapter").eval()
    ids = torch.randint(3, VOCAB, (2, 9), generator=torch.Generator().manual_seed(1))
    inputs = {"input_ids": ids}
    if arch == "bart":
        inputs["decoder_input_ids"] = torch.tensor([[2, 7, 3, 9, 4], [2, 8, 5, 6, 11]])
    with torch.no_grad():
        ours = model(**inputs).logits
        theirs = reference(**inputs).logits
        with reference.disable_adapter():
            base = reference(**inputs).logits
    assert (ours - base).abs().max() > 1e-3  # the adapter changes the model...
    assert torch.allclose(ours, theirs, atol=1e-4, rtol=0)  # ...and peft computes what we compute


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_peft_loads_our_adapter_and_gives_our_logits(arch, target, tmp_path):
    compare(tuned(arch, r=4, alpha=8, target=target), arch, tmp_path)


@pytest.mark.parametrize("arch", ["gpt2", "llama", "bart", "bert"])
def test_rslora_and_every_family(arch, tmp_path):
    target = "all-linear" if arch != "bart" else "attn.q,cross_attn.v,mlp.fc_in"
    compare(tuned(arch, r=2, alpha=3, target=target, rslora=True), arch, tmp_path)


def test_key_names_are_peft_names(tmp_path):
    peft.export_peft(tuned("gpt2", r=4, target="attn.qkv"), tmp_path / "gpt2")
    keys = set(load_file(tmp_path / "gpt2" / "adapter_model.safetensors"))
    assert "base_model.model.transformer.h.0.attn.c_attn.lora_A.weight" in keys
    assert "base_model.model.transformer.h.1.attn.c_attn.lora_B.weight" in keys
    config = json.loads((tmp_path / "gpt2" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["task_type"] == "CAUSAL_LM"
    assert config["fan_in_fan_out"] is True and config["r"] == 4 and config["lora_alpha"] == 8

    peft.export_peft(tuned("llama", r=4, target="attn.qkv"), tmp_path / "llama")
    tensors = load_file(tmp_path / "llama" / "adapter_model.safetensors")
    prefix = "base_model.model.model.layers.0.self_attn."
    assert tensors[prefix + "q_proj.lora_A.weight"].shape == (4, 32)
    assert tensors[prefix + "q_proj.lora_B.weight"].shape == (32, 4)
    assert tensors[prefix + "k_proj.lora_B.weight"].shape == (16, 4)  # 2 kv heads of 8
    # one fused LoRA, three peft LoRAs: the same A, B split in row blocks
    assert torch.equal(tensors[prefix + "q_proj.lora_A.weight"], tensors[prefix + "v_proj.lora_A.weight"])
    config = json.loads((tmp_path / "llama" / "adapter_config.json").read_text())
    assert config["fan_in_fan_out"] is False and "model.layers.1.self_attn.v_proj" in config["target_modules"]


def test_export_refuses_what_peft_cannot_express(tmp_path):
    with pytest.raises(ConfigError, match="writes LoRA adapters"):
        peft.export_peft(peft.apply(make("gpt2"), "bitfit"), tmp_path / "a")
    classifier = SequenceClassifier(ModelConfig(**TINY), num_labels=2)
    with pytest.raises(ConfigError, match="not SequenceClassifier"):
        peft.export_peft(peft.apply(classifier, "lora"), tmp_path / "a")
    with pytest.raises(ConfigError, match="no PEFT method"):
        peft.export_peft(make("gpt2"), tmp_path / "a")


def test_export_of_a_merged_model_writes_the_unmerged_base(tmp_path):
    model = tuned("llama", r=2, target="all-linear")
    peft.merge(model)
    compare(model, "llama", tmp_path)  # the base folder holds W, not W + s·BA
