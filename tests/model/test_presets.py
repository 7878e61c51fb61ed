"""Presets are the published architectures: parameter counts equal the released models' and, when
transformers is importable, the reference implementation built from the same config. Big models are
built on the meta device (shapes only: no memory, no init time)."""

from __future__ import annotations

import pytest
import torch

from plmkit.errors import ConfigError
from plmkit.model import PRESETS, ModelConfig, build_model, get_preset
from plmkit.model.registry import FAMILY_MODELS

# published / well-known totals (tied weights counted once)
KNOWN_COUNTS = {
    "gpt2-small": 124_439_808,  # GPT-2 "117M", HF gpt2
    "gpt2-medium": 354_823_168,  # GPT-2 "345M", HF gpt2-medium
    "bert-base": 109_514_298,  # BertForMaskedLM (bert-base-uncased, no pooler)
    "bert-large": 335_174_458,
    "roberta-base": 124_697_433,  # RobertaForMaskedLM
    "t5-small": 60_506_624,
    "bart-base": 139_420_416,
    "llama-1b": 1_100_048_384,  # TinyLlama-1.1B
    "unilm-base": 109_514_298,  # BERT-base weights, one shared stack
}


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # parameters() yields a tied Parameter once


def meta_model(name: str, **overrides) -> torch.nn.Module:
    with torch.device("meta"):
        return build_model(name, **overrides)


@pytest.mark.parametrize("name", sorted(KNOWN_COUNTS))
def test_known_parameter_counts(name):
    model = meta_model(name)
    assert count(model) == KNOWN_COUNTS[name]
    assert model.num_parameters() == KNOWN_COUNTS[name]


def test_bert_body_without_mlm_head():
    """BERT paper: BERT-base has ~110M parameters (body + pooler). Ours has no pooler in the LM."""
    model = meta_model("bert-base")
    body = count(model.transformer)
    head = count(model) - body  # the tied decoder weight is counted in the body's embeddings
    assert body == 108_891_648
    assert head == 768 * 768 + 768 + 2 * 768 + 30522  # transform dense, LayerNorm, decoder bias
    pooler = 768 * 768 + 768
    assert 105e6 < body + pooler < 115e6


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_builds_on_meta(name):
    config = get_preset(name)
    model = meta_model(name)
    assert type(model) is FAMILY_MODELS[config.family]
    assert model.config == config
    assert all(p.device.type == "meta" for p in model.parameters())
    assert count(model) > 0
    assert ModelConfig.from_dict(config.to_dict()) == config  # presets are plain data


def test_get_preset_returns_a_copy_and_build_model_overrides():
    config = get_preset("gpt2-tiny")
    config.vocab_size = 7
    assert PRESETS["gpt2-tiny"].vocab_size == 50257
    model = meta_model("gpt2-tiny", vocab_size=4096)
    assert model.config.vocab_size == 4096 and PRESETS["gpt2-tiny"].vocab_size == 50257
    assert model.transformer.embed.tokens.num_embeddings == 4096


@pytest.mark.parametrize(
    "typo, suggestion",
    [
        ("gpt2-smal", "gpt2-small"),
        ("bert_base", "bert-base"),
        ("llama-1B", "llama-1b"),
        ("t5small", "t5-small"),
    ],
)
def test_unknown_preset_suggests_the_closest(typo, suggestion):
    with pytest.raises(ConfigError) as info:
        get_preset(typo)
    message = str(info.value)
    assert repr(typo) in message and f'did you mean "{suggestion}"' in message
    with pytest.raises(ConfigError):
        build_model(typo)


# ---- against transformers (the reference implementation) --------------------------------------
def hf_count(class_name: str, config_name: str, **config_kw) -> int:
    """Parameters of transformers' `class_name` built on meta from `config_name(**config_kw)`."""
    transformers = pytest.importorskip("transformers")
    config = getattr(transformers, config_name)(**config_kw)
    with torch.device("meta"):
        return count(getattr(transformers, class_name)(config))


def test_gpt2_matches_transformers():
    for name in ("gpt2-small", "gpt2-medium"):
        c = get_preset(name)
        theirs = hf_count(
            "GPT2LMHeadModel",
            "GPT2Config",
            vocab_size=c.vocab_size,
            n_positions=c.max_positions,
            n_embd=c.d_model,
            n_layer=c.n_layer,
            n_head=c.n_head,
            n_inner=c.d_ff,
        )
        assert count(meta_model(name)) == theirs == KNOWN_COUNTS[name]


def bert_kwargs(c: ModelConfig) -> dict:
    return dict(
        vocab_size=c.vocab_size,
        hidden_size=c.d_model,
        num_hidden_layers=c.n_layer,
        num_attention_heads=c.n_head,
        intermediate_size=c.d_ff,
        type_vocab_size=c.type_vocab_size,
        max_position_embeddings=c.max_positions + c.position_offset,
    )


@pytest.mark.parametrize("name", ["bert-base", "bert-large", "bert-tiny", "unilm-base"])
def test_bert_matches_transformers(name):
    transformers = pytest.importorskip("transformers")
    c = get_preset(name)
    hf_config = transformers.BertConfig(**bert_kwargs(c))
    with torch.device("meta"):
        mlm = count(transformers.BertForMaskedLM(hf_config))
        body = count(transformers.BertModel(hf_config, add_pooling_layer=False))
    model = meta_model(name)
    assert count(model) == mlm
    assert count(model.transformer) == body


def test_roberta_matches_transformers():
    transformers = pytest.importorskip("transformers")
    c = get_preset("roberta-base")
    hf_config = transformers.RobertaConfig(**bert_kwargs(c), pad_token_id=c.pad_token_id)
    assert hf_config.max_position_embeddings == 514
    with torch.device("meta"):
        theirs = count(transformers.RobertaForMaskedLM(hf_config))
    assert count(meta_model("roberta-base")) == theirs == KNOWN_COUNTS["roberta-base"]


def test_t5_small_matches_transformers():
    c = get_preset("t5-small")
    theirs = hf_count(
        "T5ForConditionalGeneration",
        "T5Config",
        vocab_size=c.vocab_size,
        d_model=c.d_model,
        d_kv=c.dim_per_head,
        d_ff=c.d_ff,
        num_layers=c.n_layer,
        num_decoder_layers=c.decoder_layers,
        num_heads=c.n_head,
        relative_attention_num_buckets=c.relative_buckets,
        relative_attention_max_distance=c.relative_max_distance,
        feed_forward_proj="relu",
        tie_word_embeddings=True,
    )
    assert count(meta_model("t5-small")) == theirs == KNOWN_COUNTS["t5-small"]


def test_bart_base_matches_transformers():
    c = get_preset("bart-base")
    theirs = hf_count(
        "BartForConditionalGeneration",
        "BartConfig",
        vocab_size=c.vocab_size,
        d_model=c.d_model,
        encoder_layers=c.n_layer,
        decoder_layers=c.decoder_layers,
        encoder_attention_heads=c.n_head,
        decoder_attention_heads=c.n_head,
        encoder_ffn_dim=c.d_ff,
        decoder_ffn_dim=c.d_ff,
        max_position_embeddings=c.max_positions,
    )
    assert count(meta_model("bart-base")) == theirs == KNOWN_COUNTS["bart-base"]


@pytest.mark.parametrize("name", ["llama-1b", "llama-tiny"])
def test_llama_matches_transformers(name):
    c = get_preset(name)
    theirs = hf_count(
        "LlamaForCausalLM",
        "LlamaConfig",
        vocab_size=c.vocab_size,
        hidden_size=c.d_model,
        intermediate_size=c.d_ff,
        num_hidden_layers=c.n_layer,
        num_attention_heads=c.n_head,
        num_key_value_heads=c.kv_heads,
        max_position_embeddings=c.max_positions,
        tie_word_embeddings=c.tie_embeddings,
    )
    assert count(meta_model(name)) == theirs
    if name == "llama-1b":
        assert theirs == KNOWN_COUNTS["llama-1b"]
