"""`plm generate` says why its text ended: a last stderr line `[stopped at end-of-text after N tokens]`,
`[stopped at a stop string after N tokens]` or `[stopped at max_new_tokens=N]` (stdout keeps only text)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from plmkit.cli import main


@pytest.fixture(scope="module")
def tokenizer():
    from plmkit.tokenizer import Tokenizer

    return Tokenizer.train_bpe(["hello world, hello there"] * 20, vocab_size=300)


def forced_checkpoint(directory: Path, tokenizer, token: int) -> Path:
    """A tiny GPT whose LM-head bias makes `token` the greedy choice at every step."""
    import plmkit.io
    from plmkit.model import build_model

    model = build_model(
        "gpt2-tiny", vocab_size=tokenizer.vocab_size, d_model=32, n_layer=1, n_head=2, d_ff=64,
        max_positions=64, lm_head_bias=True, eos_token_id=tokenizer.eos_id, bos_token_id=None,
    )  # fmt: skip
    with torch.no_grad():
        model.lm_head.decoder.bias[token] = 1e4
    return plmkit.io.save(model, tokenizer, directory)


def plm_generate(capsys, model: Path, *extra: str) -> tuple[str, list[str]]:
    capsys.readouterr()
    code = main(["generate", "--model", str(model), "--prompt", "hello", *extra])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured.out, captured.err.splitlines()


@pytest.mark.parametrize("stream", [[], ["--stream"]])
def test_generate_reports_end_of_text(tmp_path, tokenizer, capsys, stream):
    model = forced_checkpoint(tmp_path / "eos", tokenizer, tokenizer.eos_id)
    out, err = plm_generate(capsys, model, "--max-new-tokens", "8", *stream)
    assert out == "hello\n"  # nothing but the prompt: the first new token ends the text
    assert err[-1] == "[stopped at end-of-text after 0 tokens]"


@pytest.mark.parametrize("stream", [[], ["--stream"]])
def test_generate_reports_max_new_tokens_and_stop_strings(tmp_path, tokenizer, capsys, stream):
    (token,) = tokenizer.encode("a", add_special_tokens=False)
    model = forced_checkpoint(tmp_path / "a", tokenizer, token)
    out, err = plm_generate(capsys, model, "--max-new-tokens", "5", *stream)
    assert out == "helloaaaaa\n" and err[-1] == "[stopped at max_new_tokens=5]"
    out, err = plm_generate(capsys, model, "--max-new-tokens", "5", "--stop", "aaa", *stream)
    assert out == "hello\n" and err[-1] == "[stopped at a stop string after 3 tokens]"


def test_generate_reports_end_of_text_from_beam_search(tmp_path, tokenizer, capsys):
    model = forced_checkpoint(tmp_path / "eos", tokenizer, tokenizer.eos_id)
    out, err = plm_generate(capsys, model, "--max-new-tokens", "4", "--num-beams", "2")
    assert out == "hello\n" and err[-1] == "[stopped at end-of-text after 0 tokens]"


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("--max-new-tokens", "0", "--max-new-tokens=0 is out of range: must be >= 1"),
        ("--temperature", "-1", "--temperature=-1.0 is out of range: must be > 0 (1.0: the model's distribution)"),
        ("--top-k", "-2", "--top-k=-2 is out of range: must be >= 0 (0: all tokens)"),
        ("--top-p", "1.5", "--top-p=1.5 is out of range: must be > 0 and <= 1 (1.0: no nucleus cut)"),
        ("--top-p", "nan", "--top-p=nan is out of range: must be > 0 and <= 1 (1.0: no nucleus cut)"),
        ("--num-beams", "0", "--num-beams=0 is out of range: must be >= 1 (1: no beam search)"),
        ("--repetition-penalty", "0", "--repetition-penalty=0.0 is out of range: must be > 0 (1.0: no penalty)"),
        ("--seed", "-1", "--seed=-1 is out of range: must be >= 0"),
        ("--max-new-tokens", "many", '--max-new-tokens="many" must be a whole number >= 1'),
        ("--dtype", "fp16", '--dtype="fp16" is not one of fp32, bf16, int8 (did you mean "bf16"?)'),
    ],
)  # fmt: skip
def test_generate_rejects_numbers_out_of_range_before_loading(tmp_path, capsys, option, value, message):
    code = main(["generate", "--model", str(tmp_path / "missing"), "--prompt", "x", f"{option}={value}"])
    err = capsys.readouterr().err
    assert code == 2 and err == f"error: {message}\n"  # the range, not the missing model
