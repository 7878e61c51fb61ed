"""`plm eval` reads its data like a recipe's data.sources entry (format, text_field, blank_line_documents,
on_error), tokenizes into the cache it is given, and rejects numbers out of range before any work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import train_helpers as h


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """An untrained tiny GPT with a BPE tokenizer trained on English prose (the numbers need no training)."""
    import plmkit.io
    from plmkit.model import build_model
    from plmkit.tokenizer import Tokenizer

    tokenizer = Tokenizer.train_bpe([h.english_text(20_000)], vocab_size=300)
    model = build_model(
        "gpt2-tiny", vocab_size=tokenizer.vocab_size, d_model=32, n_layer=1, n_head=2, d_ff=64,
        max_positions=64, eos_token_id=tokenizer.eos_id,
    )  # fmt: skip
    return plmkit.io.save(model, tokenizer, tmp_path_factory.mktemp("eval-options") / "ckpt")


def plm_eval(capsys, *argv) -> tuple[int, str, str]:
    return h.run_cli(["eval", *argv], capsys)


def report(capsys, *argv) -> dict:
    code, out, err = plm_eval(capsys, *argv)
    assert code == 0, err
    return json.loads(out.strip().splitlines()[-1])


def test_eval_reads_jsonl_csv_and_paragraphs_like_a_recipe_source(checkpoint, tmp_path, capsys):
    lines = [line for line in h.english_text(6_000).splitlines() if line.strip()]  # no blank lines
    txt = tmp_path / "plain.txt"
    txt.write_text("\n".join(lines), encoding="utf-8")
    data = tmp_path / "data.weird"  # an odd suffix: --format names the format
    data.write_text("\n".join(json.dumps({"body": line}) for line in lines), encoding="utf-8")
    cache = tmp_path / "cache"
    common = ["--block-size", "32", "--cache-dir", str(cache)]
    plain = report(capsys, checkpoint, "--data", txt, *common)
    jsonl = report(capsys, checkpoint, "--data", data, "--format", "jsonl", "--text-field", "body", *common)
    assert jsonl["tokens"] == plain["tokens"] and jsonl["loss"] == pytest.approx(plain["loss"])
    assert any(cache.iterdir())  # the token store went where it was told
    paragraphs = report(capsys, checkpoint, "--data", txt, "--blank-line-documents", *common)
    assert paragraphs["loss"] != pytest.approx(plain["loss"])  # lines joined by "\n", not separated by eos


def test_eval_skips_bad_records_when_told(checkpoint, tmp_path, capsys):
    data = tmp_path / "data.jsonl"
    good = [json.dumps({"text": line}) for line in h.english_text(4_000).splitlines()]
    data.write_text("\n".join([*good, "{not json"]), encoding="utf-8")
    common = ["--data", data, "--block-size", "32", "--cache-dir", tmp_path / "cache"]
    code, _, err = plm_eval(capsys, checkpoint, *common)
    assert code == 2 and err.startswith("error: ") and "data.jsonl" in err
    assert report(capsys, checkpoint, *common, "--on-error", "skip")["tokens"] > 0


@pytest.mark.parametrize(
    "option, message",
    [
        ("--max-batches=0", "--max-batches=0 is out of range: must be >= 1"),
        ("--batch-size=0", "--batch-size=0 is out of range: must be >= 1"),
        ("--batch-size=-3", "--batch-size=-3 is out of range: must be >= 1"),
        ("--block-size=0", "--block-size=0 is out of range: must be >= 1"),
        ("--batch-size=2.5", '--batch-size="2.5" must be a whole number >= 1'),
        ("--seed=-1", "--seed=-1 is out of range: must be >= 0"),
        ("--format=jsnl", '--format="jsnl" is not one of txt, jsonl, json, csv, tsv, parquet (did you mean "jsonl"?)'),
        ("--on-error=ignore", '--on-error="ignore" is not one of raise, skip'),
    ],
)  # fmt: skip
def test_eval_rejects_bad_numbers_and_choices_before_any_work(checkpoint, tmp_path, capsys, option, message):
    cache = tmp_path / "cache"
    code, out, err = plm_eval(capsys, checkpoint, "--data", tmp_path / "x.txt", "--cache-dir", cache, option)
    assert (code, out, err) == (2, "", f"error: {message}\n")
    assert not cache.exists()


def test_eval_without_a_full_block_is_an_error_not_perplexity_1(checkpoint, tmp_path, capsys):
    short = tmp_path / "short.txt"
    short.write_text("a few words\n", encoding="utf-8")
    code, out, err = plm_eval(
        capsys, checkpoint, "--data", short, "--block-size", "64", "--cache-dir", tmp_path / "c"
    )
    assert (
        code == 2
        and out == ""
        and err.startswith(f"error: {short}: ")
        and "fewer than one block of 64" in err
    )


def test_evaluate_loss_checks_its_numbers_in_the_same_words(checkpoint, tmp_path):
    from plmkit.errors import ConfigError
    from plmkit.evaluate import evaluate_loss
    from plmkit.io import load

    model, tokenizer = load(checkpoint)
    with pytest.raises(
        ConfigError, match=r"^max_batches=0 is out of range: must be >= 1, or null for every batch$"
    ):
        evaluate_loss(model, tokenizer, str(tmp_path / "x.txt"), max_batches=0)


def test_eval_with_an_unusable_cache_folder_is_one_error_line(checkpoint, tmp_path, capsys):
    data = tmp_path / "d.txt"  # found by the property test: a 300-character folder name was a traceback
    data.write_text(h.english_text(3_000), encoding="utf-8")
    code, out, err = plm_eval(capsys, checkpoint, "--data", data, "--cache-dir", tmp_path / ("x" * 300))
    assert code == 2 and out == "" and err.count("\n") == 1 and err.startswith("error: ")
    assert "check --cache-dir" in err
