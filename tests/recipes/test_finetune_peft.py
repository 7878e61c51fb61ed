"""`plm finetune` with a `peft:` section (LoRA) and with a quantized base under it (QLoRA, int8): only the
LoRA factors and the new task head train, the base stays bitwise what init_from holds, dev metrics rise
on the tiny task data, and `plm evaluate <run>/best` reads the PEFT checkpoint and reproduces the run's
dev metrics; for classification and token classification.

LoRA adapts a base that already knows something: the classification runs start from a base fine-tuned
(fully) to tag the sentiment words as entities, so a new classifier head and rank-4 updates can learn
the sentiment in a few dozen steps (on the untrained base, LoRA memorises the 64 rows instead)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from finetune_helpers import classification_files, ner_rows, save_base, tiny_finetune, write_jsonl
from safetensors.torch import load_file

from train_helpers import read_metrics, run_cli

LORA = "peft={method: lora, r: 4, target: all-linear}"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    """The untrained base, the task files, and `tagger`: the base fine-tuned on the entity data."""
    from plmkit.config import load_config
    from plmkit.recipes.finetune import FinetuneConfig, finetune

    root = tmp_path_factory.mktemp("ftpeft")
    train, dev = classification_files(root)
    files = {
        "base": save_base(root / "bert"),
        "train": train,
        "dev": dev,
        "ner_train": write_jsonl(root / "ner_train.jsonl", ner_rows(64, 0)),
        "ner_dev": write_jsonl(root / "ner_dev.jsonl", ner_rows(16, 1)),
    }
    recipe = root / "tagger.yaml"
    recipe.write_text("name: tagger\n")
    overrides = [
        f"init_from={files['base']}", f"data.train={files['ner_train']}", f"data.dev={files['ner_dev']}",
        "task.name=token_classification", *tiny_finetune(root, 150), "eval.every=0", "keep_best=false",
    ]  # fmt: skip
    result = finetune(load_config(FinetuneConfig, recipe, overrides), stream=io.StringIO())
    assert result["dev"]["f1"] > 0.9  # the tagger tells the positive words (PER) from the negative (LOC)
    files["tagger"] = Path(result["checkpoint"])
    return files


def finetune(capsys, tmp: Path, *overrides: str, steps: int) -> tuple[Path, dict, str]:
    """`plm finetune` of a run named peft in tmp: (run folder, its result line, its printout)."""
    recipe = tmp / "recipe.yaml"
    recipe.write_text("name: peft\n")
    code, out, err = run_cli(["finetune", recipe, *tiny_finetune(tmp, steps), *overrides], capsys)
    assert code == 0, err
    return tmp / "runs" / "peft", json.loads(out.strip().splitlines()[-1]), out


def classification(data: dict[str, Path]) -> list[str]:
    return [
        f"init_from={data['tagger']}", f"data.train={data['train']}", f"data.dev={data['dev']}",
        "data.columns={text: sentence, label: label}", "optim.lr=1e-2", "eval.every=5",
    ]  # fmt: skip


def dev_curve(run: Path, metric: str) -> list[float]:
    return [r[f"dev_{metric}"] for r in read_metrics(run) if f"dev_{metric}" in r]


def base_weights(init_from: Path, quantize: str | None = None) -> dict[str, torch.Tensor]:
    """The stack's weights of init_from, quantized as a QLoRA run quantizes them."""
    from plmkit.io import load

    model, _ = load(init_from)
    if quantize:
        from plmkit.quant import quantize as quantize_model

        model = quantize_model(model, quantize)
    return {k: v for k, v in model.state_dict().items() if k.startswith("transformer.")}


def check_only_lora_and_head_trained(
    run: Path, init_from: Path, printed: str, quantize: str | None = None
) -> torch.nn.Module:
    """The final checkpoint loads as the LoRA model; its trainable parameters are the LoRA factors and the
    classifier (the logged count too); the stack's weights are init_from's (quantized: as quantized),
    bitwise; AdamW holds state for the trained parameters only. Returns the loaded model."""
    from plmkit.io import load
    from plmkit.train.checkpoint import load_training_state

    (final,) = sorted((run / "checkpoints").glob("step-*"))[-1:]
    model, _ = load(final)
    assert model.peft_config.method == "lora"
    trained = {name: p for name, p in model.named_parameters() if p.requires_grad}
    lora = [n for n in trained if ".lora_A." in n or ".lora_B." in n]
    assert lora and set(trained) == {*lora, "classifier.weight", "classifier.bias"}
    assert f"({sum(p.numel() for p in trained.values()):,} trained)" in printed
    weights, base = load_file(final / "model.safetensors"), base_weights(init_from, quantize)
    assert base and all(torch.equal(weights[k], v) for k, v in base.items())
    assert all(weights[k].abs().sum() > 0 for k in lora if ".lora_B." in k)  # B starts at zero: it moved
    state, _ = load_training_state(final)
    assert len(state["optimizers"]["model"]["state"]) == len(trained)
    return model


def check_evaluate_reproduces_dev(capsys, run: Path, dev: Path, out: Path, task: str = "classification"):
    """`plm evaluate <run>/best` on the LoRA checkpoint: the run's dev metrics (those of the best model)."""
    summary = json.loads((run / "metrics.json").read_text())
    code, _, err = run_cli(["evaluate", run / "best", "--data", dev, "--out", out], capsys)
    assert code == 0, err
    written = json.loads((out / "metrics.json").read_text())
    assert {k: written[k] for k in summary["dev"]} == pytest.approx(summary["dev"], abs=1e-9)
    assert written["settings"]["task"]["name"] == task


def test_lora_classification(data, tmp_path, capsys):
    run, result, printed = finetune(capsys, tmp_path, *classification(data), LORA, steps=40)
    curve = dev_curve(run, "accuracy")
    assert curve[0] < 0.7 and result["best"]["value"] >= 0.85, curve  # it learns (0.58: the majority)
    check_only_lora_and_head_trained(run, data["tagger"], printed)
    check_evaluate_reproduces_dev(capsys, run, data["dev"], tmp_path / "eval")
    assert result["dev"]["accuracy"] == result["best"]["value"]


def test_qlora_int8_classification(data, tmp_path, capsys):
    """quantize.mode=int8 under the LoRA section: the frozen base is int8 in the checkpoint and after load."""
    run, result, printed = finetune(
        capsys, tmp_path, *classification(data), LORA, "quantize.mode=int8", steps=40
    )
    curve = dev_curve(run, "accuracy")
    assert curve[0] < 0.7 and result["best"]["value"] >= 0.85, curve
    model = check_only_lora_and_head_trained(run, data["tagger"], printed, quantize="int8")
    assert model.quant_config.mode == "int8"
    quantized = [n for n, m in model.named_modules() if type(m).__name__.startswith("Quant")]
    assert quantized  # the body's linears and embeddings hold int8 rows
    stored = load_file(run / "best" / "model.safetensors")
    assert any(t.dtype == torch.int8 for t in stored.values())
    check_evaluate_reproduces_dev(capsys, run, data["dev"], tmp_path / "eval")


def test_lora_token_classification(data, tmp_path, capsys):
    """From the untrained base: a tag depends on the word itself, which LoRA and the head learn from it."""
    run, result, printed = finetune(
        capsys, tmp_path, f"init_from={data['base']}", f"data.train={data['ner_train']}",
        f"data.dev={data['ner_dev']}", "task.name=token_classification", LORA, "optim.lr=1e-2",
        "eval.every=20", steps=100,
    )  # fmt: skip
    curve = dev_curve(run, "f1")
    assert curve[0] < 0.6 and result["best"]["value"] >= 0.8, curve
    check_only_lora_and_head_trained(run, data["base"], printed)
    check_evaluate_reproduces_dev(capsys, run, data["ner_dev"], tmp_path / "eval", "token_classification")
