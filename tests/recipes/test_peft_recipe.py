"""The recipe `peft:` section: a LoRA (and prefix / prompt) run trains only the PEFT parameters, leaves the
base bitwise unchanged, resumes exactly, and its checkpoints serve plmkit.load, load_adapter,
`plm merge-lora`, `plm eval` and `plm generate`."""

from __future__ import annotations

import io
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import plmkit.peft as peft
import train_helpers as h
from plmkit.config import load_config
from plmkit.io import load
from plmkit.recipes.config import RecipeConfig
from plmkit.recipes.pretrain import pretrain
from plmkit.train.checkpoint import load_training_state

LORA = h.ROOT / "recipes" / "lora-clm.yaml"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return h.write_english(tmp_path_factory.mktemp("peft-corpus") / "en.txt", 30_000)


def overrides(corpus: Path, tmp_path: Path, *extra: str) -> list[str]:
    return h.tiny_overrides(LORA, corpus, tmp_path, steps=6) + [
        "checkpoint.every=3",
        "checkpoint.keep_last=5",
        "optim.lr=1e-2",
        *extra,
    ]


def run(corpus: Path, tmp_path: Path, *extra: str) -> tuple[RecipeConfig, dict, str]:
    config = load_config(RecipeConfig, LORA, overrides(corpus, tmp_path, *extra))
    stream = io.StringIO()
    result = pretrain(config, stream=stream)
    return config, result, stream.getvalue()


@torch.no_grad()
def logits(model) -> torch.Tensor:
    ids = torch.randint(3, model.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(1))
    return model(ids).logits


def test_a_lora_run_trains_only_the_adapter_and_its_checkpoint_serves_every_command(corpus, tmp_path, capsys):
    config, result, printed = run(corpus, tmp_path)
    base_dir = Path(config.init_from)
    assert "peft: lora (r=8, dropout=0.05, target=all-linear); trainable: " in printed
    checkpoint = Path(result["checkpoint"])
    # the base weights are bitwise those of init_from; the LoRA factors moved
    base_state = load_file(base_dir / "model.safetensors")
    trained = load_file(checkpoint / "model.safetensors")
    assert set(base_state) < set(trained)
    assert all(torch.equal(trained[k], v) for k, v in base_state.items())
    lora_b = [k for k in trained if ".lora_B." in k]
    assert lora_b and all(trained[k].abs().sum() > 0 for k in lora_b)
    # AdamW holds state for the LoRA factors only
    state, _ = load_training_state(checkpoint)
    n_lora = sum(1 for k in trained if ".lora_" in k)
    assert len(state["optimizers"]["model"]["state"]) == n_lora

    model, tokenizer = load(checkpoint)  # the PEFT model itself, LoRA unmerged
    assert model.peft_config.method == "lora" and tokenizer is not None
    base, _ = load(base_dir)
    assert torch.allclose(logits(peft.load_adapter(base, checkpoint)), logits(model), atol=1e-6, rtol=0)

    code, out, err = h.run_cli(["merge-lora", "--base", checkpoint, "--out", tmp_path / "merged"], capsys)
    assert code == 0, err
    merged, _ = load(tmp_path / "merged")
    assert not hasattr(merged, "peft_config")
    assert torch.allclose(logits(merged), logits(model), atol=1e-5, rtol=0)

    code, out, err = h.run_cli(
        ["eval", checkpoint, "--data", corpus, "--block-size", "32", "--max-batches", "2"], capsys
    )
    assert code == 0, err
    assert math.isfinite(json.loads(out)["loss"])
    code, out, err = h.run_cli(
        ["generate", "--model", checkpoint, "--prompt", "The", "--max-new-tokens", "5"], capsys
    )
    assert code == 0, err
    assert out.startswith("The")
    code, out, err = h.run_cli(["info", checkpoint], capsys)
    assert code == 0 and f"peft: lora; {peft.trainable_report(model)}" in out, err
    code, out, err = h.run_cli(["convert", "--to-hf", checkpoint, "--out", tmp_path / "hf"], capsys)
    assert code == 2 and "merge it first with plm merge-lora" in err and not (tmp_path / "hf").exists()
    code, out, err = h.run_cli(["convert", "--to-hf", tmp_path / "merged", "--out", tmp_path / "hf"], capsys)
    assert code == 0, err


@pytest.mark.parametrize(
    "section",
    [
        "{method: prefix, n_tokens: 4, hidden: 16}",
        "{method: prompt, n_tokens: 4, init_text: 'The quick'}",
    ],
)
def test_prefix_and_prompt_runs_resume_exactly(section, corpus, tmp_path):
    config, _, printed = run(corpus, tmp_path, f"peft={section}")
    assert f"peft: {section.split(',')[0].split()[-1]} (" in printed
    original = Path(config.run_dir)
    copy = tmp_path / "resumed"
    shutil.copytree(original, copy)
    # a run folder resumes from its latest checkpoint only (an earlier one would leave step 6 beside a
    # second history): drop the later one, as a user rewinding a run would
    shutil.rmtree(copy / "checkpoints" / "step-00000006")
    run(
        corpus,
        tmp_path,
        f"peft={section}",
        f"out_dir={copy}",
        f"resume={copy / 'checkpoints' / 'step-00000003'}",
    )
    keys = ("step", "loss", "lr", "tokens", "val_loss")
    rows = [[{k: r.get(k) for k in keys} for r in h.read_metrics(d)] for d in (original, copy)]
    assert rows[0] == rows[1]
    base = load_file(Path(config.init_from) / "model.safetensors")
    final = load_file(Path(config.run_dir) / "checkpoints" / "step-00000006" / "model.safetensors")
    prefix = "base." if "prompt" in section else ""
    assert all(torch.equal(final[prefix + k], v) for k, v in base.items())


def test_a_bad_peft_section_is_one_error_line(corpus, tmp_path, capsys):
    args = ["pretrain", LORA, *overrides(corpus, tmp_path, "peft={method: lora, target: attn.qvk}")]
    code, _, err = h.run_cli(args, capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert (
        err.startswith('error: peft: lora target "attn.qvk" matches no Linear module') and "attn.qkv" in err
    )
    code, _, err = h.run_cli(["pretrain", LORA, *overrides(corpus, tmp_path, "peft={r: 8}")], capsys)
    assert code == 2 and "peft must be a mapping with a method" in err


def test_a_qlora_run_trains_lora_on_a_frozen_int8_base_and_resumes_exactly(corpus, tmp_path):
    config, _, printed = run(corpus, tmp_path, "quantize.mode=int8")
    assert "peft: lora (r=8, dropout=0.05, target=all-linear) on a frozen int8 base; trainable: " in printed
    checkpoints = Path(config.run_dir) / "checkpoints"
    first = load_file(checkpoints / "step-00000003" / "model.safetensors")
    final = load_file(checkpoints / "step-00000006" / "model.safetensors")
    int8 = [k for k, v in final.items() if v.dtype == torch.int8]
    assert int8 and all(torch.equal(final[k], first[k]) for k in int8)  # the quantized base never moves
    assert all(not torch.equal(final[k], first[k]) for k in final if ".lora_B." in k)
    model, _ = load(checkpoints / "step-00000006")  # quantized layers rebuilt, then LoRA on top
    assert model.quant_config.mode == "int8" and model.peft_config.method == "lora"
    copy = tmp_path / "resumed"
    shutil.copytree(Path(config.run_dir), copy)
    # a run folder resumes from its latest checkpoint only (an earlier one would leave step 6 beside a
    # second history): drop the later one, as a user rewinding a run would
    shutil.rmtree(copy / "checkpoints" / "step-00000006")
    run(
        corpus,
        tmp_path,
        "quantize.mode=int8",
        f"out_dir={copy}",
        f"resume={copy / 'checkpoints' / 'step-00000003'}",
    )
    keys = ("step", "loss", "lr", "tokens", "val_loss")
    rows = [[{k: r.get(k) for k in keys} for r in h.read_metrics(d)] for d in (Path(config.run_dir), copy)]
    assert rows[0] == rows[1]


def test_quantize_without_peft_is_one_error_line(corpus, tmp_path, capsys):
    args = ["pretrain", LORA, *overrides(corpus, tmp_path, "peft={}", "quantize.mode=int8")]
    code, _, err = h.run_cli(args, capsys)
    assert code == 2 and err.count("\n") == 1 and "quantize.mode=int8 freezes the base" in err, err
