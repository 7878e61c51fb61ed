"""`plm finetune` and `plm evaluate` end to end on tiny bases and tiny task files: every task trains and
evaluates; plm evaluate reproduces the run's dev metrics; resume and accumulation are exact; bad input
fails with one error line and writes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from finetune_helpers import (
    classification_files,
    csc_rows,
    ner_rows,
    save_base,
    squad_file,
    tiny_finetune,
    write_jsonl,
    write_tsv,
)

from tiny import ROOT
from train_helpers import losses_by_step, run_cli

SHIPPED = ROOT / "recipes" / "finetune" / "sst2.yaml"


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("bases")
    return {"masked": save_base(folder / "bert"), "seq2seq": save_base(folder / "t5", "seq2seq")}


def finetune(capsys, tmp: Path, base: Path, *overrides: str, steps: int = 8, flags: tuple = ()):
    recipe = tmp / "recipe.yaml"  # every setting comes from the overrides
    recipe.write_text("name: finetune\n")
    argv = ["finetune", recipe, f"init_from={base}", *tiny_finetune(tmp, steps), *overrides, *flags]
    return run_cli(argv, capsys)


def classification(tmp: Path) -> list[str]:
    train, dev = classification_files(tmp)
    return [f"data.train={train}", f"data.dev={dev}", "data.columns={text: sentence, label: label}"]


def test_classification_learns_and_evaluate_reproduces_it(bases, tmp_path, capsys):
    code, out, err = finetune(
        capsys, tmp_path, bases["masked"], *classification(tmp_path), steps=100, flags=("name=cls",)
    )
    assert code == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    run = tmp_path / "runs" / "cls"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["dev"]["accuracy"] == result["dev"]["accuracy"]
    assert metrics["dev"]["accuracy"] >= 0.9  # the sentiment word decides the label
    assert set(metrics["dev"]) == {"accuracy", "macro_f1", "mcc"}
    assert (run / "best" / "plmkit.json").is_file() and (run / "dev_predictions.jsonl").is_file()
    # plm evaluate on the best checkpoint: the same dev metrics, from the recipe's column mapping
    dev = tmp_path / "dev.tsv"
    code, out, err = run_cli(["evaluate", run / "best", "--data", dev, "--out", tmp_path / "eval"], capsys)
    assert code == 0, err
    written = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert written["accuracy"] == metrics["dev"]["accuracy"]
    lines = (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()
    assert len(lines) == 24 and json.loads(lines[0])["prediction"] in ("0", "1")
    # a second evaluation into the same folder is refused without --overwrite
    code, _, err = run_cli(["evaluate", run / "best", "--data", dev, "--out", tmp_path / "eval"], capsys)
    assert code == 2 and err.startswith("error:") and "--overwrite" in err


def test_regression_reports_correlations(bases, tmp_path, capsys):
    rows = [(s, f"{1 + 4 * y:.1f}") for s, y in __import__("finetune_helpers").sentiment_rows(48, 2)]
    train = write_tsv(tmp_path / "train.tsv", ["a", "score"], rows)
    code, out, err = finetune(
        capsys, tmp_path, bases["masked"], f"data.train={train}", f"data.dev={train}",
        "data.columns={text: a, label: score}", "task.regression=true",
    )  # fmt: skip
    assert code == 0, err
    dev = json.loads(out.strip().splitlines()[-1])["dev"]
    assert set(dev) == {"pearson", "spearman", "mse"}


def test_token_classification(bases, tmp_path, capsys):
    train = write_jsonl(tmp_path / "train.jsonl", ner_rows(64, 0))
    dev = write_jsonl(tmp_path / "dev.jsonl", ner_rows(16, 1))
    code, out, err = finetune(
        capsys, tmp_path, bases["masked"], f"data.train={train}", f"data.dev={dev}",
        "task.name=token_classification", steps=150,
    )  # fmt: skip
    assert code == 0, err
    dev_metrics = json.loads(out.strip().splitlines()[-1])["dev"]
    assert set(dev_metrics) == {"precision", "recall", "f1"} and dev_metrics["f1"] > 0.8


def test_extractive_qa(bases, tmp_path, capsys):
    train = squad_file(tmp_path / "train.json", 48, 0)
    dev = squad_file(tmp_path / "dev.json", 16, 1)
    code, out, err = finetune(
        capsys, tmp_path, bases["masked"], f"data.train={train}", f"data.dev={dev}",
        "task.name=extractive_qa", "task.doc_stride=8", steps=100,
    )  # fmt: skip
    assert code == 0, err
    dev_metrics = json.loads(out.strip().splitlines()[-1])["dev"]
    assert set(dev_metrics) == {"exact_match", "f1"} and dev_metrics["f1"] > 0


def test_spelling_correction_tagger_and_seq2seq(bases, tmp_path, capsys):
    train = write_jsonl(tmp_path / "train.jsonl", csc_rows(64, 0))
    dev = write_jsonl(tmp_path / "dev.jsonl", csc_rows(16, 1))
    data = [f"data.train={train}", f"data.dev={dev}", "task.name=spelling_correction"]
    code, out, err = finetune(capsys, tmp_path, bases["masked"], *data, "name=tagger")
    assert code == 0, err
    dev_metrics = json.loads(out.strip().splitlines()[-1])["dev"]
    assert "sentence_correction_f1" in dev_metrics and "char_detection_f1" in dev_metrics
    code, out, err = finetune(
        capsys,
        tmp_path,
        bases["seq2seq"],
        *data,
        "task.corrector=seq2seq",
        "task.max_new_tokens=12",
        "name=s2s",
    )
    assert code == 0, err
    assert "sentence_correction_f1" in json.loads(out.strip().splitlines()[-1])["dev"]


def test_seq2seq_bleu_rouge(bases, tmp_path, capsys):
    rows = [{"source": s, "target": s} for s, _ in __import__("finetune_helpers").sentiment_rows(32, 3)]
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    code, out, err = finetune(
        capsys, tmp_path, bases["seq2seq"], f"data.train={train}", f"data.dev={train}",
        "task.name=seq2seq", "task.max_new_tokens=10",
    )  # fmt: skip
    assert code == 0, err
    assert {"bleu", "rouge1", "rouge2", "rougeL", "exact_match"} <= set(
        json.loads(out.strip().splitlines()[-1])["dev"]
    )


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    (step,) = sorted((run / "checkpoints").glob("step-*"))[-1:]
    return load_file(step / "model.safetensors")


def test_resume_equals_uninterrupted(bases, tmp_path, capsys):
    """A run resumed from its step-3 checkpoint (its later checkpoint removed, as if killed) ends with the
    same losses, dev metrics and weights as the uninterrupted run."""
    import shutil

    data = [*classification(tmp_path), "eval.every=3", "checkpoint.every=3", "checkpoint.keep_last=0"]
    for name in ("whole", "split"):
        code, _, err = finetune(capsys, tmp_path, bases["masked"], *data, f"name={name}", steps=6)
        assert code == 0, err
    whole, split = tmp_path / "runs" / "whole", tmp_path / "runs" / "split"
    expected = final_weights(whole)
    shutil.rmtree(split / "checkpoints" / "step-00000006")
    code, _, err = finetune(
        capsys, tmp_path, bases["masked"], *data, "name=split", steps=6,
        flags=(f"--resume={split / 'checkpoints' / 'step-00000003'}",),
    )  # fmt: skip
    assert code == 0, err
    assert losses_by_step(whole) == losses_by_step(split)
    resumed = final_weights(split)
    assert all(torch.equal(expected[k], resumed[k]) for k in expected)
    assert (
        json.loads((whole / "metrics.json").read_text())["dev"]
        == json.loads((split / "metrics.json").read_text())["dev"]
    )


def test_accumulation_equals_big_batch(bases, tmp_path, capsys):
    data = classification(tmp_path)
    code, _, err = finetune(
        capsys, tmp_path, bases["masked"], *data, "name=big", "train.batch_size=8", steps=4
    )
    assert code == 0, err
    code, _, err = finetune(
        capsys,
        tmp_path,
        bases["masked"],
        *data,
        "name=acc",
        "train.batch_size=4",
        "train.accumulation=2",
        steps=4,
    )
    assert code == 0, err
    big, acc = losses_by_step(tmp_path / "runs" / "big"), losses_by_step(tmp_path / "runs" / "acc")
    assert big.keys() == acc.keys()
    assert all(abs(big[k] - acc[k]) < 1e-5 for k in big)


def test_early_stopping_keeps_the_best(bases, tmp_path, capsys):
    data = classification(tmp_path)
    code, out, err = finetune(
        capsys, tmp_path, bases["masked"], *data, "name=stop", "eval.every=1", "early_stopping.patience=1",
        "optim.lr=1e-9", steps=20,
    )  # fmt: skip
    assert code == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert result["stopped_early"] and result["step"] < 20
    best = json.loads((tmp_path / "runs" / "stop" / "best" / "dev_metrics.json").read_text())
    assert best["accuracy"] == result["best"]["value"]


# ---- bad input: one error line, exit 2, nothing written ---------------------------------------------------
def bad_run(capsys, tmp: Path, base: Path, *overrides: str) -> str:
    code, _, err = finetune(capsys, tmp, base, *overrides, "name=bad")
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert not (tmp / "runs" / "bad").exists()
    return lines[0]


def test_missing_label_column(bases, tmp_path, capsys):
    train, dev = classification_files(tmp_path)
    err = bad_run(
        capsys,
        tmp_path,
        bases["masked"],
        f"data.train={train}",
        f"data.dev={dev}",
        "data.columns={text: sentence, label: gold}",
    )
    assert "train.tsv:2" in err and "'gold'" in err and "data.columns.label" in err


def test_unknown_dev_label(bases, tmp_path, capsys):
    train, _ = classification_files(tmp_path)
    dev = write_tsv(tmp_path / "dev2.tsv", ["sentence", "label"], [("good film", 1), ("a film", 7)])
    err = bad_run(
        capsys,
        tmp_path,
        bases["masked"],
        f"data.train={train}",
        f"data.dev={dev}",
        "data.columns={text: sentence, label: label}",
    )
    assert "dev2.tsv:3" in err and "'7'" in err


def test_empty_dev_split(bases, tmp_path, capsys):
    train, _ = classification_files(tmp_path)
    dev = write_tsv(tmp_path / "empty.tsv", ["sentence", "label"], [])
    err = bad_run(
        capsys,
        tmp_path,
        bases["masked"],
        f"data.train={train}",
        f"data.dev={dev}",
        "data.columns={text: sentence, label: label}",
    )
    assert "empty.tsv" in err and "no rows" in err


def test_qa_answer_offset_mismatch(bases, tmp_path, capsys):
    train = squad_file(tmp_path / "train.json", 4, 0)
    data = json.loads(train.read_text())
    data["data"][0]["paragraphs"][1]["qas"][0]["answers"][0]["answer_start"] += 1
    train.write_text(json.dumps(data))
    err = bad_run(capsys, tmp_path, bases["masked"], f"data.train={train}", "task.name=extractive_qa")
    assert "q1" in err and "answer_start" in err


def test_text_pair_with_an_empty_side(bases, tmp_path, capsys):
    train = write_tsv(tmp_path / "pairs.tsv", ["a", "b", "label"], [("good", "film", 1), ("bad", " ", 0)])
    err = bad_run(
        capsys,
        tmp_path,
        bases["masked"],
        f"data.train={train}",
        "data.columns={text: a, text_pair: b, label: label}",
    )
    assert "pairs.tsv:3" in err and "text_pair" in err


def test_task_head_mismatch(bases, tmp_path, capsys):
    """plm evaluate of a QA task on a model without a span head: one error line, nothing written."""
    dev = squad_file(tmp_path / "dev.json", 4, 1)
    code, _, err = run_cli(
        ["evaluate", bases["masked"], "--task", "extractive_qa", "--data", dev, "--out", tmp_path / "e"],
        capsys,
    )
    assert code == 2 and err.startswith("error:") and "SpanQA" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "e").exists()
    # and a QA fine-tune from an encoder-decoder, which has no single stack for a span head
    train = squad_file(tmp_path / "train.json", 4, 0)
    err = bad_run(capsys, tmp_path, bases["seq2seq"], f"data.train={train}", "task.name=extractive_qa")
    assert "stack" in err


def test_model_dropout_rates_apply_to_the_init_from_checkpoint(bases, tmp_path, capsys):
    """model.dropout / model.attention_dropout change an init_from checkpoint's rates (its own are kept
    otherwise), the new task head's dropout included."""
    from plmkit.config import load_config
    from plmkit.model.attention import Attention
    from plmkit.model.dropout import Dropout
    from plmkit.recipes.finetune import build_finetune_run
    from plmkit.recipes.finetune_config import FinetuneConfig
    from plmkit.train.distributed.base import Strategy

    def rates(*extra: str) -> tuple[set[float], set[float]]:
        overrides = [
            f"init_from={bases['masked']}",
            *tiny_finetune(tmp_path),
            *classification(tmp_path),
            *extra,
        ]
        run = build_finetune_run(load_config(FinetuneConfig, None, overrides), Strategy(), None)
        assert isinstance(run.model.dropout, Dropout)  # the new head's, counted below
        hidden = {m.p for m in run.model.modules() if isinstance(m, Dropout)}
        return hidden, {m.dropout_p for m in run.model.modules() if isinstance(m, Attention)}

    assert rates() == ({0.0}, {0.0})  # the base was saved without dropout
    assert rates("model.dropout=0.25", "model.attention_dropout=0.125") == ({0.25}, {0.125})
    assert "warning" not in capsys.readouterr().err
    rates("model.dropout=0.25", "model.d_model=64")  # the checkpoint's width stays; said once
    err = capsys.readouterr().err
    assert err.count("warning: init_from=") == 1 and "the recipe's model.d_model are ignored" in err, err
