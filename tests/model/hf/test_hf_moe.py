"""Mixtral and Qwen2-MoE against transformers on the same weights (DESIGN.md principle 5).

Tiny random transformers models (every parameter moved off its initial value) saved with
save_pretrained load into plmkit with logits and router logits within 1e-4 on a right-padded batch, the
load-balancing loss equal to transformers' aux_loss and the training loss (CE + coef · aux) equal to
theirs; greedy generation gives the same ids; the export loads back into transformers with equal logits.
"""

from __future__ import annotations

import json
import os

import pytest
import torch

from plmkit.errors import CheckpointError
from plmkit.generation import generate_ids
from plmkit.model import CausalLM, ModelConfig
from plmkit.model.hf import load_hf, save_hf

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
transformers = pytest.importorskip("transformers", reason="parity tests need transformers")
transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()

V = 99
ATOL = 1e-4
COMMON = dict(
    vocab_size=V,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
    num_experts_per_tok=2,
    router_aux_loss_coef=0.02,
)
CASES = {
    "mixtral": (
        "MixtralForCausalLM",
        lambda: transformers.MixtralConfig(**COMMON, intermediate_size=48, num_local_experts=4),
    ),
    "qwen2-moe": (
        "Qwen2MoeForCausalLM",
        lambda: transformers.Qwen2MoeConfig(
            **COMMON,
            intermediate_size=64,
            moe_intermediate_size=24,
            shared_expert_intermediate_size=40,
            num_experts=4,
        ),
    ),
    # every other block dense (decoder_sparse_step), the top-k renormalised
    "qwen2-moe-sparse": (
        "Qwen2MoeForCausalLM",
        lambda: transformers.Qwen2MoeConfig(
            **{**COMMON, "num_hidden_layers": 3},
            intermediate_size=64,
            moe_intermediate_size=24,
            shared_expert_intermediate_size=40,
            num_experts=4,
            decoder_sparse_step=2,
            norm_topk_prob=True,
        ),
    ),
}


def build_hf(name: str, seed: int = 0):
    cls_name, make = CASES[name]
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = getattr(transformers, cls_name)(make())
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model.eval()


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    cache = {}

    def get(name: str):
        if name not in cache:
            model = build_hf(name)
            folder = tmp_path_factory.mktemp(name)
            model.save_pretrained(folder)
            cache[name] = (model, folder)
        return cache[name]

    return get


def padded_batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(3, V, (2, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0
    return {"input_ids": ids.masked_fill(mask == 0, 0), "attention_mask": mask}


@pytest.mark.parametrize("name", list(CASES))
def test_logits_router_logits_and_aux_loss_match_transformers(name, hf_folder):
    hf, folder = hf_folder(name)
    ours, _ = load_hf(folder)
    assert type(ours) is CausalLM and ours.config.n_experts == 4 and not ours.training
    inputs = padded_batch()
    keep = inputs["attention_mask"].bool()
    with torch.no_grad():
        theirs = hf(**inputs, output_router_logits=True)
        mine = ours(**inputs)
    assert (theirs.logits[keep] - mine.logits[keep]).abs().max() <= ATOL
    assert len(mine.router_logits) == len(theirs.router_logits)
    for a, b in zip(theirs.router_logits, mine.router_logits, strict=True):
        assert (a[keep.reshape(-1)] - b[keep.reshape(-1)]).abs().max() <= ATOL
    assert torch.allclose(mine.aux_loss, theirs.aux_loss, atol=1e-5)


@pytest.mark.parametrize("name", ["mixtral", "qwen2-moe"])
def test_training_loss_is_transformers_ce_plus_weighted_aux_loss(name, hf_folder):
    hf, folder = hf_folder(name)
    ours, _ = load_hf(folder)
    assert ours.config.router_aux_loss_coef == 0.02 and ours.config.router_z_loss_coef == 0.0
    inputs = padded_batch()
    labels = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
    hf.train()
    ours.train()
    try:
        theirs = hf(**inputs, labels=labels, output_router_logits=True)
        mine = ours(**inputs, labels=labels)
    finally:
        hf.eval()
    assert abs(float(theirs.loss) - float(mine.loss)) < 1e-5
    # the same gradient reaches the routers
    theirs.loss.backward()
    mine.loss.backward()
    gate = hf.model.layers[0].mlp.gate
    assert torch.allclose(gate.weight.grad, ours.transformer.blocks[0].mlp.router.weight.grad, atol=1e-5)


@pytest.mark.parametrize("name", ["mixtral", "qwen2-moe"])
def test_greedy_generation_matches_transformers(name, hf_folder):
    hf, folder = hf_folder(name)
    ours, _ = load_hf(folder)
    g = torch.Generator().manual_seed(11)
    ids = torch.randint(3, V, (2, 8), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding
    ids = ids.masked_fill(mask == 0, 0)
    hf.generation_config = transformers.GenerationConfig(pad_token_id=0, eos_token_id=None)
    with torch.no_grad():
        expected = hf.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=12)[:, 8:]
    unused = min(set(range(3, V)) - set(expected.flatten().tolist()))
    actual = generate_ids(ours, ids, mask, max_new_tokens=12, eos_token_id=unused)
    assert actual.tolist() == expected.tolist()


@pytest.mark.parametrize("name", list(CASES))
def test_export_loads_back_into_transformers(name, hf_folder, tmp_path):
    hf, folder = hf_folder(name)
    ours, _ = load_hf(folder)
    save_hf(ours, None, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == hf.config.model_type
    cls = type(hf)
    back, info = cls.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    inputs = padded_batch()
    keep = inputs["attention_mask"].bool()
    with torch.no_grad():
        assert (hf(**inputs).logits[keep] - back.eval()(**inputs).logits[keep]).abs().max() <= ATOL
    again, _ = load_hf(tmp_path)
    for (n, a), (m, b) in zip(ours.state_dict().items(), again.state_dict().items(), strict=True):
        assert n == m and torch.equal(a, b), n


def test_a_model_trained_here_exports_as_mixtral_or_qwen2_moe(tmp_path):
    base = dict(
        vocab_size=V, d_model=32, n_layer=2, n_head=4, n_kv_head=2, d_ff=48, max_positions=64,
        position="rotary", norm="rmsnorm", activation="silu", gated_mlp=True, attention_bias=False,
        mlp_bias=False, tie_embeddings=False, pad_token_id=0, n_experts=4, top_k=2,
    )  # fmt: skip
    for name, extra, cls in [
        ("mixtral", dict(capacity_factor=1.25, router_z_loss_coef=1e-3), "MixtralForCausalLM"),
        (
            "qwen2_moe",
            dict(n_shared_experts=1, shared_expert_gate=True, qkv_bias=True),
            "Qwen2MoeForCausalLM",
        ),
    ]:
        torch.manual_seed(0)
        model = CausalLM(ModelConfig(**base, **extra)).eval()
        save_hf(model, None, tmp_path / name)
        assert json.loads((tmp_path / name / "config.json").read_text())["model_type"] == name
        back = getattr(transformers, cls).from_pretrained(tmp_path / name).eval()
        ids = torch.randint(1, V, (2, 10))
        with torch.no_grad():
            assert (model(ids).logits - back(ids).logits).abs().max() <= ATOL
    # a shape neither expresses: experts in every other block without a shared expert
    with pytest.raises(CheckpointError, match="cannot be expressed as Hugging Face mixtral.*moe_every"):
        save_hf(CausalLM(ModelConfig(**{**base, "n_layer": 2}, moe_every=2)), None, tmp_path / "x")


def test_unsupported_routing_settings_are_refused(hf_folder, tmp_path):
    _, folder = hf_folder("mixtral")
    for key, value, message in [
        ("router_jitter_noise", 0.1, "router_jitter_noise"),
        ("sliding_window", 4, "sliding-window"),
    ]:
        target = tmp_path / key
        target.mkdir()
        config = json.loads((folder / "config.json").read_text())
        config[key] = value
        (target / "config.json").write_text(json.dumps(config))
        (target / "model.safetensors").symlink_to(folder / "model.safetensors")
        with pytest.raises(CheckpointError, match=message):
            load_hf(target)
