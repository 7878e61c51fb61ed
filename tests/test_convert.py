"""The Python functions behind `plm convert`, `plm merge-lora`, `plm quantize` and `plm info`
(plmkit.convert, plmkit.summary): callable without the command line."""

from __future__ import annotations

import pytest
import torch

import plmkit.io
from plmkit import peft
from plmkit.convert import export_hf, import_hf, merge_adapter, quantize_checkpoint
from plmkit.errors import ConfigError
from plmkit.model import build_model
from plmkit.summary import summarize


def tiny_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(
        "gpt2-tiny", vocab_size=300, d_model=32, n_layer=2, n_head=2, d_ff=64, max_positions=64
    )


def logits(model: torch.nn.Module) -> torch.Tensor:
    ids = torch.arange(12).view(2, 6)  # (B, T)
    with torch.no_grad():
        return model.eval()(input_ids=ids).logits


def test_hf_export_and_import_round_trip_exactly(tmp_path):
    model = tiny_model()
    plmkit.io.save(model, None, tmp_path / "ckpt")
    assert type(export_hf(tmp_path / "ckpt", tmp_path / "hf")).__name__ == "CausalLM"
    back = import_hf(tmp_path / "hf", tmp_path / "back")
    assert torch.equal(logits(back), logits(model))
    assert torch.equal(logits(plmkit.io.load(tmp_path / "back")[0]), logits(model))


def test_export_refuses_a_peft_checkpoint(tmp_path):
    plmkit.io.save(peft.apply(tiny_model(), "lora", r=2), None, tmp_path / "lora")
    with pytest.raises(ConfigError, match="merge it first"):
        export_hf(tmp_path / "lora", tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_merge_adapter_folds_lora_into_a_plain_checkpoint(tmp_path):
    plmkit.io.save(tiny_model(), None, tmp_path / "base")
    tuned = peft.apply(tiny_model(), "lora", r=2)
    with torch.no_grad():
        for name, param in tuned.named_parameters():
            if "lora" in name:
                param.normal_(0, 0.1)
    peft.save_adapter(tuned, tmp_path / "adapter")
    merged = merge_adapter(tmp_path / "base", tmp_path / "merged", tmp_path / "adapter")
    assert not hasattr(merged, "peft_config")
    assert torch.allclose(logits(plmkit.io.load(tmp_path / "merged")[0]), logits(tuned), atol=1e-5, rtol=0)
    with pytest.raises(ConfigError, match="holds no adapter"):
        merge_adapter(tmp_path / "base", tmp_path / "again")  # no adapter given, none inside the base


def test_quantize_checkpoint_reports_sizes_and_refuses_its_own_input(tmp_path):
    plmkit.io.save(tiny_model(), None, tmp_path / "ckpt")
    result = quantize_checkpoint(tmp_path / "ckpt", tmp_path / "int8", "int8")
    assert 0 < result.bytes_after < result.bytes_before
    assert plmkit.io.load(tmp_path / "int8")[0].quant_config.mode == "int8"
    with pytest.raises(ConfigError, match="is the input"):
        quantize_checkpoint(tmp_path / "ckpt", tmp_path / "ckpt", "int8")


def test_summarize_a_preset_and_a_checkpoint(tmp_path):
    summary = summarize("gpt2-small")
    assert summary.source == "preset" and summary.n_parameters == 124_439_808
    assert (
        list(summary.architecture)[:2] == ["family", "vocab_size"] and summary.architecture["n_layer"] == 12
    )
    plmkit.io.save(peft.apply(tiny_model(), "lora", r=2), None, tmp_path / "lora")
    summary = summarize(str(tmp_path / "lora"))
    assert (
        summary.source == "checkpoint" and summary.peft.startswith("lora; ") and summary.quantization is None
    )
    with pytest.raises(ConfigError, match="neither a preset name nor a checkpoint"):
        summarize(str(tmp_path / "nowhere"))


def test_library_outputs_follow_the_output_rule(tmp_path):
    """import_hf / export_hf / merge_adapter / quantize_checkpoint refuse an existing checkpoint unless
    overwrite=True, and never their input (plmkit.files.check_output_folder)."""
    from hashing import tree_hashes
    from plmkit.errors import OutputError

    plmkit.io.save(tiny_model(), None, tmp_path / "a")
    plmkit.io.save(tiny_model(1), None, tmp_path / "b")
    export_hf(tmp_path / "a", tmp_path / "hf")
    before = tree_hashes(tmp_path / "a", tmp_path / "b", tmp_path / "hf")
    with pytest.raises(OutputError, match="already exists and is a checkpoint"):
        import_hf(tmp_path / "hf", tmp_path / "b")
    with pytest.raises(OutputError, match="is the input"):
        export_hf(tmp_path / "a", tmp_path / "a", overwrite=True)
    with pytest.raises(OutputError, match="already exists"):
        quantize_checkpoint(tmp_path / "a", tmp_path / "b", "int8")
    assert tree_hashes(tmp_path / "a", tmp_path / "b", tmp_path / "hf") == before
    import_hf(tmp_path / "hf", tmp_path / "b", overwrite=True)
    assert torch.equal(logits(plmkit.io.load(tmp_path / "b")[0]), logits(tiny_model()))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "hf"]  # no temporary folder left
