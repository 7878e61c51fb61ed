"""Adapter-only checkpoints, loading onto a base, `plm merge-lora`, and their errors."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from safetensors.torch import load_file

import plmkit.io
import plmkit.peft as peft
from plmkit.cli import main
from plmkit.errors import CheckpointError
from plmkit.model import ModelConfig, SequenceClassifier, build_model

VOCAB = 61
TINY = dict(vocab_size=VOCAB, d_model=32, n_layer=2, n_head=4, d_ff=64, max_positions=32)


def make(seed: int = 0, head: bool = False, **overrides) -> torch.nn.Module:
    torch.manual_seed(seed)
    config = ModelConfig(**{**TINY, **overrides})
    return (SequenceClassifier(config, num_labels=3) if head else build_model(config)).eval()


def perturb_peft(model) -> None:
    """Stand-in for training: move every PEFT parameter."""
    with torch.no_grad():
        for name in peft.peft_parameter_names(model):
            param = model.get_parameter(name)
            param.add_(torch.randn_like(param) * 0.1)


@torch.no_grad()
def logits(model) -> torch.Tensor:
    ids = torch.randint(3, VOCAB, (2, 7), generator=torch.Generator().manual_seed(1))
    return model(ids).logits


METHOD_OPTIONS = {
    "lora": dict(r=4, target="attn.q,attn.v,mlp.fc_out", rslora=True),
    "adapter": dict(kind="pfeiffer", size=4),
    "bitfit": {},
    "prompt": dict(n_tokens=3, init_ids=[4, 5]),
}


@pytest.mark.parametrize("method", list(METHOD_OPTIONS))
def test_adapter_round_trip_reproduces_the_tuned_model(method, tmp_path):
    model = peft.apply(make(), method, **METHOD_OPTIONS[method])
    perturb_peft(model)
    expected = logits(model)
    peft.save_adapter(model, tmp_path / "adapter")

    header = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert header["format"] == "plmkit-adapter" and header["method"] == method
    assert header["options"] == model.peft_config.options
    tensors = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    assert sorted(tensors) == sorted(peft.peft_parameter_names(model))  # only the PEFT parameters
    assert header["n_parameters"] == sum(t.numel() for t in tensors.values())
    assert sum(t.numel() for t in tensors.values()) < 0.25 * sum(p.numel() for p in make().parameters())

    loaded = peft.load_adapter(make(), tmp_path / "adapter")
    assert torch.equal(logits(loaded), expected)
    assert peft.trainable_report(loaded) == peft.trainable_report(model)  # trainable again after loading


def test_classifier_adapter_carries_its_head(tmp_path):
    model = peft.apply(make(head=True), "lora", r=2)
    perturb_peft(model)
    peft.save_adapter(model, tmp_path / "a")
    assert "classifier.weight" in load_file(tmp_path / "a" / "adapter_model.safetensors")
    fresh = make(head=True)
    torch.nn.init.normal_(fresh.classifier.weight)  # another random head: the adapter's replaces it
    loaded = peft.load_adapter(fresh, tmp_path / "a")
    assert torch.equal(logits(loaded), logits(model))


def test_loading_onto_a_base_of_another_shape_is_a_checkpoint_error(tmp_path):
    model = peft.apply(make(), "lora", r=4)
    peft.save_adapter(model, tmp_path / "a")
    with pytest.raises(CheckpointError, match=r"d_model=32 \(this base: 64\)"):
        peft.load_adapter(make(d_model=64), tmp_path / "a")
    with pytest.raises(CheckpointError, match=r"n_layer=2 \(this base: 3\)"):
        peft.load_adapter(make(n_layer=3), tmp_path / "a")
    # same shape fields, but the file's tensors do not fit (edited or foreign file)
    header = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    header["options"]["r"] = 8
    (tmp_path / "a" / "adapter_config.json").write_text(json.dumps(header))
    with pytest.raises(CheckpointError, match=r"has shape \[4, 32\] but the model expects \[8, 32\]"):
        peft.load_adapter(make(), tmp_path / "a")


def test_loading_errors_are_clear(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        peft.load_adapter(make(), tmp_path / "missing")
    (tmp_path / "peftlib").mkdir()
    (tmp_path / "peftlib" / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 8}')
    with pytest.raises(CheckpointError, match="peft-library adapter"):
        peft.load_adapter(make(), tmp_path / "peftlib")
    model = peft.apply(make(), "bitfit")
    peft.save_adapter(model, tmp_path / "bitfit")
    with pytest.raises(CheckpointError, match="holds a bitfit adapter but the model already carries lora"):
        peft.load_adapter(peft.apply(make(), "lora"), tmp_path / "bitfit")
    with pytest.raises(CheckpointError, match="cannot apply its bitfit settings"):
        peft.load_adapter(make(attention_bias=False, mlp_bias=False, norm_bias=False), tmp_path / "bitfit")


def test_a_base_with_the_same_shapes_but_another_config_loads_with_a_warning(tmp_path):
    peft.save_adapter(peft.apply(make(), "lora"), tmp_path / "a")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        peft.load_adapter(make(dropout=0.1), tmp_path / "a")  # dropout does not change the function
    with pytest.warns(UserWarning, match="config differs"):
        peft.load_adapter(make(norm_eps=1e-3), tmp_path / "a")


def test_prompt_tuned_model_saves_as_a_plmkit_checkpoint(tmp_path):
    model = peft.apply(make(head=True), "prompt", n_tokens=3)
    perturb_peft(model)
    plmkit.io.save(model, None, tmp_path / "ckpt")
    loaded, _ = plmkit.io.load(tmp_path / "ckpt")
    assert type(loaded).__name__ == "PromptTunedModel"
    assert torch.equal(logits(loaded), logits(model))
    assert peft.trainable_report(loaded) == peft.trainable_report(model)  # prompt + head, base frozen


SAVED = {
    "lora": (False, dict(r=4, target="all-linear")),
    "lora-classifier": (True, dict(r=2)),
    "adapter": (False, dict(kind="houlsby", size=4)),
    "bitfit": (False, {}),
    "prefix": (False, dict(n_tokens=3, hidden=8)),
    "ptuning_v2-classifier": (True, dict(n_tokens=3, projection=False)),
}


@pytest.mark.parametrize("case", list(SAVED))
def test_a_peft_model_saved_with_plmkit_save_loads_back_as_itself(case, tmp_path):
    """plmkit.save records the method in plmkit.json; plmkit.load rebuilds the base, applies it and loads
    every tensor (a training checkpoint is such a folder). The folder also holds the adapter alone."""
    head, options = SAVED[case]
    method = case.split("-")[0].replace("ptuning_v2", "prefix")
    model = peft.apply(make(head=head), method, **options)
    perturb_peft(model)
    expected = logits(model)
    plmkit.io.save(model, None, tmp_path / "ckpt")
    header = json.loads((tmp_path / "ckpt" / "plmkit.json").read_text())
    assert header["model_class"] == type(model).__name__ and header["peft"] == model.peft_config.to_dict()

    loaded, _ = plmkit.io.load(tmp_path / "ckpt")
    assert type(loaded) is type(model) and loaded.peft_config.to_dict() == model.peft_config.to_dict()
    state = loaded.state_dict()
    assert state.keys() == model.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert torch.equal(logits(loaded), expected)
    assert peft.trainable_report(loaded) == peft.trainable_report(model)
    # the adapter beside the model: onto a fresh base it gives the tuned model again
    again = peft.load_adapter(make(head=head), tmp_path / "ckpt")
    assert torch.allclose(logits(again), expected, atol=1e-6, rtol=0)


def test_a_corrupt_peft_entry_in_plmkit_json_is_a_checkpoint_error(tmp_path):
    plmkit.io.save(peft.apply(make(), "lora", r=2), None, tmp_path / "ckpt")
    path = tmp_path / "ckpt" / "plmkit.json"
    header = json.loads(path.read_text())
    header["peft"]["options"]["r"] = 0
    path.write_text(json.dumps(header))
    with pytest.raises(CheckpointError, match="cannot apply its lora settings.*positive integer"):
        plmkit.io.load(tmp_path / "ckpt")
    header["peft"] = "lora"
    path.write_text(json.dumps(header))
    with pytest.raises(CheckpointError, match='"peft" must be'):
        plmkit.io.load(tmp_path / "ckpt")


# ---- plm merge-lora --------------------------------------------------------------------------------
def test_cli_merge_lora_writes_a_plain_merged_checkpoint(tmp_path, capsys):
    base = make(position="rotary", norm="rmsnorm", gated_mlp=True, activation="silu", tie_embeddings=False)
    plmkit.io.save(base, None, tmp_path / "base")
    model = peft.apply(base, "lora", r=4, target="all-linear")
    perturb_peft(model)
    expected = logits(model)
    peft.save_adapter(model, tmp_path / "adapter")

    code = main(
        [
            "merge-lora",
            "--base",
            str(tmp_path / "base"),
            "--adapter",
            str(tmp_path / "adapter"),
            "--out",
            str(tmp_path / "merged"),
        ]
    )
    assert code == 0
    assert "merged" in capsys.readouterr().out
    merged, _ = plmkit.io.load(tmp_path / "merged")
    assert type(merged).__name__ == "CausalLM" and not hasattr(merged, "peft_config")
    assert set(merged.state_dict()) == set(base.state_dict()) - {n for n in base.state_dict() if "lora" in n}
    assert torch.allclose(logits(merged), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("case", ["missing-adapter", "other-shape", "not-lora", "missing-base"])
def test_cli_merge_lora_errors_exit_2_with_one_line(case, tmp_path, capsys):
    plmkit.io.save(make(), None, tmp_path / "base")
    if case == "other-shape":
        peft.save_adapter(peft.apply(make(d_model=64), "lora"), tmp_path / "adapter")
    elif case == "not-lora":
        peft.save_adapter(peft.apply(make(), "bitfit"), tmp_path / "adapter")
    elif case == "missing-base":
        peft.save_adapter(peft.apply(make(), "lora"), tmp_path / "adapter")
    base = tmp_path / ("nowhere" if case == "missing-base" else "base")
    code = main(
        [
            "merge-lora",
            "--base",
            str(base),
            "--adapter",
            str(tmp_path / "adapter"),
            "--out",
            str(tmp_path / "merged"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert not (tmp_path / "merged").exists()
