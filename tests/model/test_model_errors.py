"""User mistakes with models fail loudly: a PlmkitError that names the value, the limit and the fix."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from plmkit.errors import ConfigError, PlmkitError, ShapeError
from plmkit.model import ModelConfig, SequenceClassifier
from tiny import tiny_model

VOCAB = 64
TINY = dict(vocab_size=VOCAB, d_model=32, n_layer=2, n_head=4, d_ff=64, max_positions=16)


tiny = partial(tiny_model, **TINY)  # tiny(family, seed=0, **overrides)


def call(model, ids, **kw):
    if model.config.family == "seq2seq":
        return model(ids, decoder_input_ids=ids, **kw)
    return model(ids, **kw)


# ---- token ids ---------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["causal", "masked", "prefix", "seq2seq"])
def test_token_id_outside_vocabulary(family):
    model = tiny(family)
    ids = torch.tensor([[1, 2, 70, 3]])
    with pytest.raises(ShapeError) as info:
        call(model, ids)
    message = str(info.value)
    assert "70" in message and "64" in message and "vocab_size" in message
    with pytest.raises(ShapeError, match=str(VOCAB)):
        call(model, torch.tensor([[VOCAB]]))  # the first id out of range


@pytest.mark.parametrize("family", ["causal", "seq2seq"])
def test_negative_token_id(family):
    model = tiny(family)
    with pytest.raises(ShapeError) as info:
        call(model, torch.tensor([[5, -3, 2]]))
    assert "-3" in str(info.value)


def test_negative_token_id_message_names_the_bad_id():
    with pytest.raises(ShapeError, match="token id -3"):
        tiny()(torch.tensor([[5, -3, 2]]))


def test_seq2seq_decoder_ids_checked_too():
    model = tiny("seq2seq")
    with pytest.raises(ShapeError, match="decoder_input_ids"):
        model(torch.tensor([[1, 2]]), decoder_input_ids=torch.tensor([[1, 99]]))


def test_input_ids_must_be_2d():
    with pytest.raises(ShapeError, match=r"\(5,\)"):
        tiny()(torch.tensor([1, 2, 3, 4, 5]))


# ---- sequence length ---------------------------------------------------------------------------
@pytest.mark.parametrize("position", ["learned", "sinusoidal", "rotary"])
def test_sequence_longer_than_max_positions(position):
    model = tiny(position=position)
    with pytest.raises(ShapeError) as info:
        model(torch.ones(1, 17, dtype=torch.long))
    message = str(info.value)
    assert "max_positions=16" in message and "17" in message
    model(torch.ones(1, 16, dtype=torch.long))  # exactly at the limit is fine


def test_cache_counts_towards_max_positions():
    model = tiny()
    with torch.no_grad():
        past = model(torch.ones(1, 12, dtype=torch.long), use_cache=True).past_key_values
        with pytest.raises(ShapeError, match="max_positions=16"):
            model(torch.ones(1, 5, dtype=torch.long), past_key_values=past)
        model(torch.ones(1, 4, dtype=torch.long), past_key_values=past)


def test_learned_positions_limit_with_offset_and_relative_has_none():
    model = tiny("seq2seq", position_offset=2)  # BART-style: the table has max_positions + 2 rows
    with pytest.raises(ShapeError, match="max_positions=16"):
        model(torch.ones(1, 17, dtype=torch.long), decoder_input_ids=torch.ones(1, 3, dtype=torch.long))
    model(torch.ones(1, 16, dtype=torch.long), decoder_input_ids=torch.ones(1, 16, dtype=torch.long))
    # T5's relative buckets have no length limit: the last bucket covers every long distance
    t5 = tiny("seq2seq", position="relative")
    assert t5(
        torch.ones(1, 40, dtype=torch.long), decoder_input_ids=torch.ones(1, 40, dtype=torch.long)
    ).logits.shape == (1, 40, VOCAB)


# ---- attention masks ---------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["causal", "masked", "prefix", "seq2seq"])
def test_wrong_length_2d_attention_mask(family):
    model = tiny(family)
    ids = torch.ones(2, 6, dtype=torch.long)
    with pytest.raises(ShapeError) as info:
        call(model, ids, attention_mask=torch.ones(2, 5, dtype=torch.long))
    message = str(info.value)
    assert "(2, 5)" in message and "(2, 6)" in message


def test_cached_mask_must_cover_past_and_new_tokens():
    model = tiny()
    with torch.no_grad():
        past = model(torch.ones(1, 4, dtype=torch.long), use_cache=True).past_key_values
        with pytest.raises(ShapeError, match=r"\(1, 5\)"):
            model(torch.ones(1, 1, dtype=torch.long), attention_mask=torch.ones(1, 1), past_key_values=past)


def test_wrong_3d_attention_mask():
    model = tiny("prefix")
    with pytest.raises(ShapeError, match=r"\(2, 6, 5\)"):
        model(torch.ones(2, 6, dtype=torch.long), attention_mask=torch.ones(2, 6, 5))


def test_seq2seq_needs_inputs():
    model = tiny("seq2seq")
    with pytest.raises(ShapeError, match="encoder_hidden_states"):
        model(decoder_input_ids=torch.ones(1, 2, dtype=torch.long))
    with pytest.raises(ShapeError, match="labels"):
        model(torch.ones(1, 2, dtype=torch.long))


# ---- configuration -----------------------------------------------------------------------------
def config_error(**kw) -> str:
    with pytest.raises(ConfigError) as info:
        ModelConfig(**{**TINY, **kw})
    return str(info.value)


def test_unknown_family_suggests_the_closest():
    message = config_error(family="casual")
    assert "'casual'" in message and 'did you mean "causal"' in message
    assert "masked" in message and "seq2seq" in message  # lists the choices
    assert 'did you mean "seq2seq"' in config_error(family="seq2sec")


@pytest.mark.parametrize(
    "field, value, suggestion",
    [
        ("position", "rotery", "rotary"),
        ("norm", "rms_norm", "rmsnorm"),
        ("activation", "gelu-tanh", "gelu_tanh"),
    ],
)
def test_unknown_choice_suggests_the_closest(field, value, suggestion):
    assert f'did you mean "{suggestion}"' in config_error(**{field: value})


def test_d_model_not_divisible_by_heads():
    message = config_error(d_model=30, n_head=4)
    assert "d_model=30" in message and "n_head=4" in message
    ModelConfig(**{**TINY, "d_model": 30, "n_head": 4, "head_dim": 8})  # an explicit head_dim decouples them


def test_heads_not_multiple_of_kv_heads():
    message = config_error(n_head=4, n_kv_head=3)
    assert "n_head=4" in message and "n_kv_head=3" in message
    ModelConfig(**{**TINY, "n_kv_head": 2})
    ModelConfig(**{**TINY, "n_kv_head": 1})


@pytest.mark.parametrize("field", ["vocab_size", "d_model", "n_layer", "n_head", "d_ff", "max_positions"])
def test_sizes_must_be_positive(field):
    assert field in config_error(**{field: 0})


def test_odd_head_dim_for_rotary_and_odd_width_for_sinusoidal():
    assert "rotary" in config_error(position="rotary", d_model=36, n_head=4)  # head_dim 9
    assert "sinusoidal" in config_error(position="sinusoidal", d_model=33, n_head=3)


def test_replace_validates():
    config = ModelConfig(**TINY)
    with pytest.raises(ConfigError):
        config.replace(n_head=5)
    with pytest.raises(ConfigError, match='did you mean "n_layer"'):
        config.replace(n_layers=4)


def test_from_dict_unknown_key_suggests_the_closest():
    data = ModelConfig(**TINY).to_dict()
    assert ModelConfig.from_dict(data) == ModelConfig(**TINY)
    data["d_modle"] = data.pop("d_model")
    with pytest.raises(ConfigError) as info:
        ModelConfig.from_dict(data)
    assert "model.d_modle" in str(info.value) and 'did you mean "d_model"' in str(info.value)
    with pytest.raises(ConfigError, match="student.vocab"):
        ModelConfig.from_dict({"vocab": 10}, where="student")


def test_decoder_start_needs_an_id():
    config = ModelConfig(
        **{**TINY, "family": "seq2seq", "pad_token_id": None, "decoder_start_token_id": None}
    )
    with pytest.raises(ConfigError, match="decoder_start_token_id"):
        _ = config.decoder_start_id


def test_bad_pooling():
    with pytest.raises(ConfigError, match="pooling='max'"):
        SequenceClassifier(ModelConfig(**TINY), num_labels=2, pooling="max")


def test_model_errors_are_user_errors():
    for error in (ConfigError, ShapeError):
        assert issubclass(error, PlmkitError) and error.exit_code == 2
