"""Parity with Hugging Face transformers on the same weights (DESIGN.md principle 5).

For each architecture a tiny random transformers model (fixed seed, every parameter moved away from
its initial value so that a norm left at 1 or a bias left at 0 cannot hide a wrong mapping) is saved
with `save_pretrained` and loaded by plmkit:
  * logits agree within 1e-4 (fp32) on a right-padded batch (real positions compared);
  * greedy generation of 20 new tokens gives the same ids as transformers' `generate`;
  * plmkit -> save_hf -> transformers' from_pretrained gives the same logits, with nothing missing;
  * sharded safetensors, legacy pytorch_model.bin and bf16/fp16 weights load to the same model.
transformers is a test-only dependency: without it this module is skipped.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

import plmkit.io
from plmkit.errors import CheckpointError
from plmkit.generation import generate_ids
from plmkit.model import CausalLM, MaskedLM, Seq2SeqLM, TransformerModel
from plmkit.model.hf import load_hf, save_hf

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may download
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

transformers = pytest.importorskip(
    "transformers",
    reason="parity tests need transformers: pip install -e '.[dev]' (or pip install transformers)",
)
transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()

V = 99  # vocabulary of every tiny model
ATOL = 1e-4
NOISE = 0.1  # std of the noise added to every parameter
NEW_TOKENS = 20


# ---- the architectures -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    name: str
    make_config: Any  # () -> transformers config
    hf_class: str  # transformers class name
    kind: str  # causal | masked | base | seq2seq
    ours: type  # plmkit class load_hf must return


def _t5(**kw):
    return transformers.T5Config(d_model=32, d_kv=8, num_layers=2, num_heads=4, d_ff=64, vocab_size=V, **kw)


def _bert(cls_name="BertConfig", **kw):
    cls = getattr(transformers, cls_name)
    return cls(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, vocab_size=V, **kw
    )


def _llama(cls_name="LlamaConfig", **kw):
    cls = getattr(transformers, cls_name)
    return cls(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,  # grouped-query attention
        intermediate_size=64,
        vocab_size=V,
        max_position_embeddings=128,
        **kw,
    )


CASES = {
    c.name: c
    for c in [
        Case(
            "gpt2",
            lambda: transformers.GPT2Config(
                n_embd=32, n_layer=2, n_head=4, vocab_size=V, n_positions=64, bos_token_id=1, eos_token_id=2
            ),
            "GPT2LMHeadModel",
            "causal",
            CausalLM,
        ),
        Case("bert", lambda: _bert(max_position_embeddings=64), "BertForMaskedLM", "masked", MaskedLM),
        Case("bert-base", lambda: _bert(max_position_embeddings=64), "BertModel", "base", TransformerModel),
        Case(
            "roberta",
            lambda: _bert("RobertaConfig", max_position_embeddings=66),  # 64 positions + pad_id + 1
            "RobertaForMaskedLM",
            "masked",
            MaskedLM,
        ),
        Case(
            "bart",
            lambda: transformers.BartConfig(
                d_model=32,
                encoder_layers=2,
                decoder_layers=2,
                encoder_attention_heads=4,
                decoder_attention_heads=4,
                encoder_ffn_dim=64,
                decoder_ffn_dim=64,
                vocab_size=V,
                max_position_embeddings=64,
            ),
            "BartForConditionalGeneration",
            "seq2seq",
            Seq2SeqLM,
        ),
        # T5 v1.0: relu, tied embeddings, output scaled by d_model**-0.5
        Case("t5", lambda: _t5(), "T5ForConditionalGeneration", "seq2seq", Seq2SeqLM),
        # T5 v1.1: gated-gelu; transformers 5 ties it anyway and records scale_decoder_outputs=False
        Case(
            "t5-v1_1",
            lambda: _t5(feed_forward_proj="gated-gelu", tie_word_embeddings=False),
            "T5ForConditionalGeneration",
            "seq2seq",
            Seq2SeqLM,
        ),
        Case("llama", lambda: _llama(), "LlamaForCausalLM", "causal", CausalLM),
        Case("qwen2", lambda: _llama("Qwen2Config"), "Qwen2ForCausalLM", "causal", CausalLM),  # q/k/v bias
        Case(
            "qwen2-tied",
            lambda: _llama("Qwen2Config", tie_word_embeddings=True),
            "Qwen2ForCausalLM",
            "causal",
            CausalLM,
        ),
    ]
}
GENERATIVE = [n for n, c in CASES.items() if c.kind in ("causal", "seq2seq")]


def perturb(model: torch.nn.Module, seed: int) -> None:
    """Move every parameter (norm weights, biases, positions, ...) away from its initial value."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():  # tied parameters appear once
            p.add_(NOISE * torch.randn(p.shape, generator=g, dtype=p.dtype))


def build_hf(case: Case, seed: int = 0) -> torch.nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = getattr(transformers, case.hf_class)(case.make_config())
    perturb(model, seed + 1)
    return model.eval()


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    """name -> (transformers model, folder written by its save_pretrained); built once per module."""
    cache: dict[str, tuple[torch.nn.Module, Path]] = {}

    def get(name: str) -> tuple[torch.nn.Module, Path]:
        if name not in cache:
            model = build_hf(CASES[name])
            folder = tmp_path_factory.mktemp(name)
            model.save_pretrained(folder)
            cache[name] = (model, folder)
        return cache[name]

    return get


# ---- running both sides ----------------------------------------------------------------------------
def pad_id(case: Case) -> int:
    pad = case.make_config().pad_token_id
    return 0 if pad is None else pad


def batch(case: Case) -> dict[str, torch.Tensor]:
    """A right-padded batch of 2 (row 1 has 4 pads); seq2seq models also get decoder inputs."""
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(3, V, (2, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0
    inputs = {"input_ids": ids.masked_fill(mask == 0, pad_id(case)), "attention_mask": mask}
    if case.kind == "seq2seq":
        inputs["decoder_input_ids"] = torch.randint(3, V, (2, 7), generator=g)
    return inputs


def hf_out(model: torch.nn.Module, case: Case, inputs: dict) -> torch.Tensor:
    with torch.no_grad():
        out = model(**inputs)
    return out.last_hidden_state if case.kind == "base" else out.logits


def our_out(model: torch.nn.Module, case: Case, inputs: dict) -> torch.Tensor:
    with torch.no_grad():
        out = model(**inputs)
    return out.hidden_states if case.kind == "base" else out.logits


def assert_close_on_real(case: Case, inputs: dict, expected: torch.Tensor, actual: torch.Tensor) -> None:
    """Compare real positions only (padded encoder/decoder-only positions are free to differ)."""
    assert expected.shape == actual.shape
    if case.kind != "seq2seq":  # the seq2seq outputs are decoder positions, which have no padding
        keep = inputs["attention_mask"].bool()
        expected, actual = expected[keep], actual[keep]
    err = (expected.float() - actual.float()).abs().max().item()
    assert err <= ATOL, f"{case.name}: max |logit difference| {err:.2e} > {ATOL}"


# ---- import ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(CASES))
def test_load_hf_logits_match_transformers(name, hf_folder):
    case = CASES[name]
    hf, folder = hf_folder(name)
    inputs = batch(case)
    expected = hf_out(hf, case, inputs)
    for loader in (load_hf, plmkit.io.load):  # io.load detects the Hugging Face folder by itself
        model, tokenizer = loader(folder)
        assert type(model) is case.ours, loader
        assert tokenizer is None  # the folder has no tokenizer files
        assert not model.training
        assert all(p.dtype == torch.float32 for p in model.parameters())
        assert_close_on_real(case, inputs, expected, our_out(model, case, inputs))


def _hf_greedy(hf: torch.nn.Module, case: Case, ids: torch.Tensor, mask: torch.Tensor, start: int | None):
    """transformers' greedy generate of exactly NEW_TOKENS tokens: no EOS, no forced tokens."""
    hf.generation_config = transformers.GenerationConfig(
        pad_token_id=pad_id(case), decoder_start_token_id=start, eos_token_id=None
    )
    with torch.no_grad():
        out = hf.generate(
            input_ids=ids, attention_mask=mask, do_sample=False, num_beams=1, max_new_tokens=NEW_TOKENS
        )
    return out[:, 1:] if case.kind == "seq2seq" else out[:, ids.shape[1] :]  # drop start / prompt


@pytest.mark.parametrize("name", GENERATIVE)
def test_greedy_generation_matches_transformers(name, hf_folder):
    case = CASES[name]
    hf, folder = hf_folder(name)
    ours, _ = load_hf(folder)
    g = torch.Generator().manual_seed(11)
    ids = torch.randint(3, V, (2, 8), generator=g)
    mask = torch.ones_like(ids)
    if case.kind == "seq2seq":
        mask[1, 5:] = 0  # encoder input: right padding
    else:
        mask[1, :3] = 0  # decoder-only prompts: left padding (the next token is in the last column)
    ids = ids.masked_fill(mask == 0, pad_id(case))
    start = ours.config.decoder_start_id if case.kind == "seq2seq" else None
    expected = _hf_greedy(hf, case, ids, mask, start)
    assert expected.shape == (2, NEW_TOKENS)
    # EOS must stop neither side: transformers runs without one; plmkit gets an id transformers never
    # produced, so it can only stop early if its own tokens differ (which the comparison catches).
    unused = min(set(range(3, V)) - set(expected.flatten().tolist()))
    actual = generate_ids(ours, ids, mask, max_new_tokens=NEW_TOKENS, eos_token_id=unused)
    assert actual.tolist() == expected.tolist()


# ---- export ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(CASES))
def test_save_hf_round_trip_through_transformers(name, hf_folder, tmp_path):
    case = CASES[name]
    hf, folder = hf_folder(name)
    ours, _ = load_hf(folder)
    save_hf(ours, None, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == hf.config.model_type
    assert config["architectures"] == [case.hf_class]
    cls = getattr(transformers, case.hf_class)
    back, info = cls.from_pretrained(tmp_path, output_loading_info=True)
    missing = info["missing_keys"]
    assert not missing and not info["mismatched_keys"], info  # nothing freshly initialised
    assert not info["unexpected_keys"], info
    inputs = batch(case)
    assert_close_on_real(case, inputs, hf_out(hf, case, inputs), hf_out(back.eval(), case, inputs))
    # and plmkit reads its own export back
    again, _ = plmkit.io.load(tmp_path)
    assert_close_on_real(case, inputs, our_out(ours, case, inputs), our_out(again, case, inputs))


# ---- other weight layouts --------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["gpt2", "bert-base", "bart", "t5-v1_1", "llama"])
def test_sharded_safetensors_load_identically(name, hf_folder, tmp_path):
    case = CASES[name]
    hf, single = hf_folder(name)
    hf.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert not (tmp_path / "model.safetensors").exists()
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 1
    sharded, _ = load_hf(tmp_path)
    reference, _ = load_hf(single)
    for (n, a), (m, b) in zip(reference.state_dict().items(), sharded.state_dict().items(), strict=True):
        assert n == m and torch.equal(a, b), n
    inputs = batch(case)
    assert_close_on_real(case, inputs, hf_out(hf, case, inputs), our_out(sharded, case, inputs))


@pytest.mark.parametrize("name", ["gpt2", "bert", "roberta", "t5", "qwen2"])
def test_legacy_pytorch_model_bin_loads_identically(name, hf_folder, tmp_path):
    # transformers 5 writes only safetensors: build the legacy layout (config.json + a pickled state
    # dict, tied tensors under both names) by hand, as transformers 4's safe_serialization=False did.
    case = CASES[name]
    hf, _ = hf_folder(name)
    hf.config.save_pretrained(tmp_path)
    torch.save({k: v.clone() for k, v in hf.state_dict().items()}, tmp_path / "pytorch_model.bin")
    model, _ = load_hf(tmp_path)
    assert type(model) is case.ours
    inputs = batch(case)
    assert_close_on_real(case, inputs, hf_out(hf, case, inputs), our_out(model, case, inputs))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", ["gpt2", "bert", "t5", "llama"])
def test_half_precision_weights_load(name, dtype, tmp_path):
    case = CASES[name]
    build_hf(case).to(dtype).save_pretrained(tmp_path)
    stored = load_file(tmp_path / "model.safetensors")
    assert {t.dtype for t in stored.values() if t.is_floating_point()} == {dtype}

    # default: fp32 model holding exactly the stored values; it matches transformers run in fp32
    model, _ = load_hf(tmp_path)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    reference = getattr(transformers, case.hf_class).from_pretrained(tmp_path, dtype=torch.float32).eval()
    inputs = batch(case)
    assert_close_on_real(case, inputs, hf_out(reference, case, inputs), our_out(model, case, inputs))

    # dtype=...: the model is kept in the stored precision, every value exactly as stored
    half, _ = load_hf(tmp_path, dtype=dtype)
    assert {p.dtype for p in half.parameters()} == {dtype}
    for n, p in half.named_parameters():
        assert torch.equal(p, model.get_parameter(n).to(dtype)), n
    with torch.no_grad():
        low = our_out(half, case, inputs).float()
    keep = inputs["attention_mask"].bool() if case.kind != "seq2seq" else slice(None)
    full = our_out(model, case, inputs)
    assert torch.isfinite(low).all()
    assert (low[keep] - full[keep]).abs().max() < 0.1 * full[keep].abs().max()


# ---- T5 v1.1 as transformers 4 wrote it ------------------------------------------------------------
def _legacy_t5_v1_1(folder: Path) -> tuple[torch.nn.Module, torch.Tensor]:
    """A v1.1-style folder: tie_word_embeddings=false and a separate lm_head.weight, no
    scale_decoder_outputs key (transformers 4 read the flag as "untied, unscaled")."""
    case = CASES["t5-v1_1"]
    hf = build_hf(case, seed=3)
    hf.save_pretrained(folder)
    tensors = load_file(folder / "model.safetensors")
    assert "lm_head.weight" not in tensors  # transformers 5 stores only the shared embedding
    g = torch.Generator().manual_seed(5)
    lm_head = torch.randn(V, 32, generator=g)
    tensors["lm_head.weight"] = lm_head
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((folder / "config.json").read_text())
    config["tie_word_embeddings"] = False
    config.pop("scale_decoder_outputs", None)
    (folder / "config.json").write_text(json.dumps(config))
    return hf, lm_head


def test_legacy_untied_t5_v1_1_uses_its_own_unscaled_lm_head(tmp_path):
    hf, lm_head = _legacy_t5_v1_1(tmp_path)
    case = CASES["t5-v1_1"]
    inputs = batch(case)
    # transformers 4 math by hand: decoder output (final norm included) @ lm_head.T, no d_model**-0.5
    with torch.no_grad():
        memory = hf.encoder(
            input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]
        ).last_hidden_state
        hidden = hf.decoder(
            input_ids=inputs["decoder_input_ids"],
            encoder_hidden_states=memory,
            encoder_attention_mask=inputs["attention_mask"],
        ).last_hidden_state
    expected = hidden @ lm_head.T

    model, _ = load_hf(tmp_path)
    assert not model.config.tie_embeddings and not model.config.tied_output_scale
    assert torch.equal(model.lm_head.decoder.weight, lm_head)
    assert model.lm_head.decoder.weight.data_ptr() != model.encoder.embed.tokens.weight.data_ptr()
    assert_close_on_real(case, inputs, expected, our_out(model, case, inputs))

    # transformers 5 reads such a folder the same way (untied head, no scaling)
    reloaded = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert_close_on_real(case, inputs, expected, hf_out(reloaded, case, inputs))

    # export keeps the head separate and transformers reads it back unchanged
    save_hf(model, None, tmp_path / "export")
    config = json.loads((tmp_path / "export" / "config.json").read_text())
    assert config["tie_word_embeddings"] is False
    assert torch.equal(load_file(tmp_path / "export" / "model.safetensors")["lm_head.weight"], lm_head)
    back = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path / "export").eval()
    assert_close_on_real(case, inputs, expected, hf_out(back, case, inputs))


def test_t5_v1_0_scales_tied_output_and_v1_1_does_not(hf_folder):
    v10, _ = load_hf(hf_folder("t5")[1])
    v11, _ = load_hf(hf_folder("t5-v1_1")[1])
    assert v10.config.tie_embeddings and v10.config.tied_output_scale
    assert v10.config.activation == "relu" and not v10.config.gated_mlp
    assert v11.config.tie_embeddings and not v11.config.tied_output_scale  # transformers 5 layout
    assert v11.config.gated_mlp and v11.config.activation == "gelu_tanh"


# ---- known gaps ------------------------------------------------------------------------------------


def test_bert_model_pooler_survives_round_trip(hf_folder, tmp_path):
    hf, folder = hf_folder("bert-base")
    ours, _ = load_hf(folder)
    save_hf(ours, None, tmp_path)
    back, info = transformers.BertModel.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"], info
    inputs = batch(CASES["bert-base"])
    with torch.no_grad():
        assert torch.allclose(hf(**inputs).pooler_output, back.eval()(**inputs).pooler_output, atol=ATOL)


def test_bart_final_logits_bias_is_not_ignored(tmp_path):
    case = CASES["bart"]
    hf = build_hf(case, seed=9)
    with torch.no_grad():
        hf.final_logits_bias.copy_(torch.linspace(-1, 1, V)[None])
    hf.save_pretrained(tmp_path)
    inputs = batch(case)
    try:  # plmkit must either match transformers or refuse the checkpoint
        model, _ = load_hf(tmp_path)
    except CheckpointError as e:
        assert "final_logits_bias" in str(e)
        return
    assert_close_on_real(case, inputs, hf_out(hf, case, inputs), our_out(model, case, inputs))
