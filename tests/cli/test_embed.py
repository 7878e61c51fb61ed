"""`plm embed`: JSON lines of vectors (or --out .npy / .jsonl, never overwriting without --overwrite),
the checkpoint's pooling / normalisation unless --pooling / --normalize / --no-normalize say otherwise."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from plmkit.cli import main
from plmkit.model import TransformerModel
from plmkit.model.heads import embed_texts
from plmkit.model.hf import load_hf, save_hf
from plmkit.model.presets import get_preset
from plmkit.tokenizer import Tokenizer

TEXTS = ["the quick brown fox", "a lazy dog sleeps in the warm sun today", "fox"]


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    """A tiny sentence encoder folder (BertModel + modules.json: mean pooling, normalised)."""
    tmp = tmp_path_factory.mktemp("encoder")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a small vocabulary: expected here
        tok = Tokenizer.train(TEXTS * 20, family="bert", vocab_size=100)
    config = get_preset("bert-tiny").replace(
        vocab_size=tok.vocab_size, n_layer=1, d_model=32, n_head=2, d_ff=64, max_positions=64
    )
    torch.manual_seed(0)
    save_hf(TransformerModel(config, normalize=True), tok, tmp / "st")
    return tmp / "st"


def lines(out: str) -> list[list[float]]:
    return [json.loads(line) for line in out.splitlines()]


def test_prints_one_vector_per_text_as_the_library(encoder, capsys):
    assert main(["embed", str(encoder), "--text", *TEXTS]) == 0
    vectors = lines(capsys.readouterr().out)
    model, tok = load_hf(encoder)
    expected = embed_texts(model, tok, TEXTS)
    assert torch.allclose(torch.tensor(vectors), expected, atol=1e-6)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0)  # the checkpoint normalises


def test_file_and_overrides(encoder, tmp_path, capsys):
    file = tmp_path / "texts.txt"
    file.write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    assert main(["embed", str(encoder), "--file", str(file), "--no-normalize"]) == 0
    raw = lines(capsys.readouterr().out)
    assert len(raw) == 3 and not np.allclose(np.linalg.norm(raw, axis=1), 1.0)
    assert main(["embed", str(encoder), "--file", str(file), "--pooling", "cls"]) == 0
    cls = lines(capsys.readouterr().out)
    model, tok = load_hf(encoder)
    assert torch.allclose(torch.tensor(cls), embed_texts(model, tok, TEXTS, pooling="cls"), atol=1e-6)
    assert main(["embed", str(encoder), "--text", "x", "--pooling", "maen"]) == 2
    assert 'did you mean "mean"' in capsys.readouterr().err


def test_out_files_are_never_overwritten_silently(encoder, tmp_path, capsys):
    npy, jsonl = tmp_path / "v.npy", tmp_path / "v.jsonl"
    assert main(["embed", str(encoder), "--text", *TEXTS, "--out", str(npy)]) == 0
    assert main(["embed", str(encoder), "--text", *TEXTS, "--out", str(jsonl)]) == 0
    stored = np.load(npy)
    assert stored.shape == (3, 32) and np.allclose(
        stored, [json.loads(r) for r in jsonl.read_text().splitlines()]
    )
    before = npy.read_bytes()
    capsys.readouterr()
    assert main(["embed", str(encoder), "--text", "other", "--out", str(npy)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --out {npy} already exists; add --overwrite") and err.count("\n") == 1
    assert npy.read_bytes() == before
    assert main(["embed", str(encoder), "--text", "other", "--out", str(npy), "--overwrite"]) == 0
    assert np.load(npy).shape == (1, 32)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--out", "{tmp}/v.txt"], "unknown format '.txt'; use a .jsonl or .npy"),
        (["--out", "{tmp}/missing/v.npy"], "does not exist; create it first"),
        (["--batch-size", "0"], "--batch-size=0 is out of range: must be >= 1"),
    ],
)
def test_bad_options_fail_before_any_work(encoder, tmp_path, capsys, args, message):
    args = [a.format(tmp=tmp_path) for a in args]
    assert main(["embed", str(encoder), "--text", "x", *args]) == 2
    assert message in capsys.readouterr().err


def test_file_errors_and_non_encoders(encoder, tmp_path, tiny_model, capsys):
    assert main(["embed", str(encoder), "--file", str(tmp_path / "nope.txt")]) == 2
    assert "nope.txt does not exist" in capsys.readouterr().err
    (tmp_path / "empty.txt").write_text("")
    assert main(["embed", str(encoder), "--file", str(tmp_path / "empty.txt")]) == 2
    assert "is empty" in capsys.readouterr().err
    import plmkit.io

    _, tok = load_hf(encoder)
    plmkit.io.save(tiny_model("masked", vocab_size=tok.vocab_size), tok, tmp_path / "mlm")
    assert main(["embed", str(tmp_path / "mlm"), "--text", "x"]) == 2
    assert "bare encoder (TransformerModel), not a MaskedLM" in capsys.readouterr().err


def test_out_equal_to_the_input_file_is_refused_even_with_overwrite(encoder, tmp_path, capsys):
    texts = tmp_path / "texts.jsonl"
    texts.write_text("one\ntwo\n", encoding="utf-8")
    before = texts.read_bytes()
    assert main(["embed", str(encoder), "--file", str(texts), "--out", str(texts), "--overwrite"]) == 2
    assert "is the input --file" in capsys.readouterr().err
    assert texts.read_bytes() == before
