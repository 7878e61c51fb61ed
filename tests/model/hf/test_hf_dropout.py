"""A Hugging Face checkpoint's dropout rates come with it (fine-tuning uses them, as transformers does),
go back out on export, and a recipe's model.dropout / model.attention_dropout change them on an init_from
checkpoint."""

from __future__ import annotations

import json

import pytest
import torch

from plmkit.model.attention import Attention
from plmkit.model.dropout import Dropout, set_dropout_rates
from plmkit.model.hf import load_hf, save_hf
from plmkit.model.hf_arch import ARCHITECTURES

transformers = pytest.importorskip("transformers")

V = 99
SMALL = {
    "gpt2": lambda **kw: transformers.GPT2Config(n_embd=32, n_layer=1, n_head=4, vocab_size=V, n_positions=32, **kw),
    "bert": lambda **kw: transformers.BertConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64, vocab_size=V, **kw
    ),
    "bart": lambda **kw: transformers.BartConfig(
        d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=4, decoder_attention_heads=4,
        encoder_ffn_dim=64, decoder_ffn_dim=64, vocab_size=V, max_position_embeddings=32, **kw,
    ),
    "t5": lambda **kw: transformers.T5Config(
        d_model=32, d_kv=8, num_layers=1, num_heads=4, d_ff=64, vocab_size=V, **kw
    ),
    "llama": lambda **kw: transformers.LlamaConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64, vocab_size=V, **kw
    ),
}  # fmt: skip
# (config.json keys set, plmkit's (dropout, attention_dropout) expected)
RATES = {
    "gpt2": ({"resid_pdrop": 0.2, "embd_pdrop": 0.2, "attn_pdrop": 0.3}, (0.2, 0.3)),
    "bert": ({"hidden_dropout_prob": 0.2, "attention_probs_dropout_prob": 0.3}, (0.2, 0.3)),
    "bart": ({"dropout": 0.2, "attention_dropout": 0.3}, (0.2, 0.3)),
    "t5": ({"dropout_rate": 0.2}, (0.2, 0.2)),  # T5 drops attention weights at its one rate
    "llama": ({"attention_dropout": 0.3}, (0.0, 0.3)),  # no hidden dropout in LLaMA
}
LM_CLASS = {"gpt2": "GPT2LMHeadModel", "bert": "BertForMaskedLM", "bart": "BartForConditionalGeneration",
            "t5": "T5ForConditionalGeneration", "llama": "LlamaForCausalLM"}  # fmt: skip


def rates_in(model: torch.nn.Module) -> tuple[set[float], set[float]]:
    hidden = {m.p for m in model.modules() if isinstance(m, Dropout)}
    attention = {m.dropout_p for m in model.modules() if isinstance(m, Attention)}
    return hidden, attention


@pytest.mark.parametrize("name", list(SMALL))
def test_defaults_are_transformers_defaults(name):
    """An absent key reads as transformers' default for that architecture."""
    fields = ARCHITECTURES[name].dropout
    assert fields.read({}) == fields.read(SMALL[name]().to_dict())
    null = {key: None for key in (*fields.hidden, fields.attention) if key}  # "null" in a config.json
    assert fields.read(null) == fields.read({})


@pytest.mark.parametrize("name", list(SMALL))
def test_rates_load_into_every_module_and_export_back(name, tmp_path):
    given, (dropout, attention) = RATES[name]
    torch.manual_seed(0)
    getattr(transformers, LM_CLASS[name])(SMALL[name](**given)).save_pretrained(tmp_path / "hf")
    model, _ = load_hf(tmp_path / "hf")
    assert (model.config.dropout, model.config.attention_dropout) == (dropout, attention)  # JSON: exact
    hidden, attn = rates_in(model)
    assert attn == {attention} and hidden <= {dropout}  # LLaMA builds no hidden Dropout at 0
    save_hf(model, None, tmp_path / "out")
    written = json.loads((tmp_path / "out" / "config.json").read_text())
    for key, value in given.items():
        assert written[key] == pytest.approx(value)


def test_set_dropout_rates_changes_modules_and_config(tmp_path):
    torch.manual_seed(0)
    transformers.BertForMaskedLM(SMALL["bert"]()).save_pretrained(tmp_path)
    model, _ = load_hf(tmp_path)
    assert rates_in(model) == ({0.1}, {0.1})
    set_dropout_rates(model, dropout=0.0)
    assert rates_in(model) == ({0.0}, {0.1}) and model.config.dropout == 0.0
    set_dropout_rates(model, attention_dropout=0.05)
    assert rates_in(model) == ({0.0}, {0.05}) and model.config.attention_dropout == 0.05
