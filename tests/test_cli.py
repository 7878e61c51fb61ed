"""The `plm` command line: subcommand wiring, exit codes, one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path

import plmkit
from plmkit.cli import main
from plmkit.errors import ConfigError

SRC = Path(__file__).resolve().parents[1] / "src"


def run_plm(*args: str) -> subprocess.CompletedProcess:
    """`python -m plmkit ARGS` in a fresh interpreter (how a user runs it)."""
    paths = [str(SRC), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
    return subprocess.run([sys.executable, "-m", "plmkit", *args], capture_output=True, text=True,
                          env=env, timeout=120)


def tiny_checkpoint(directory: Path, tokenizer=None) -> Path:
    import plmkit.io
    from plmkit.model import build_model

    vocab = tokenizer.vocab_size if tokenizer is not None else 300
    model = build_model("gpt2-tiny", vocab_size=vocab, d_model=32, n_layer=2, n_head=2, d_ff=64,
                        max_positions=64)
    return plmkit.io.save(model, tokenizer, directory)


def fake_module(monkeypatch, name: str, **attrs) -> types.ModuleType:
    """Put a stand-in for `name` in sys.modules: tests the CLI's wiring without the real work."""
    module = types.ModuleType(name)
    for key, value in attrs.items():
        setattr(module, key, value)
    monkeypatch.setitem(sys.modules, name, module)
    return module


# ---------------------------------------------------------------- top level


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"plm {plmkit.__version__}\n"


def test_version_subprocess():
    result = run_plm("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"plm {plmkit.__version__}"


def test_help_lists_subcommands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("generate", "info", "demo"):
        assert f"    {command} " in out


def test_no_command_prints_usage_and_exits_2(capsys):
    assert main([]) == 2
    assert "usage: plm" in capsys.readouterr().err


def test_usage_error_exits_2(capsys):
    assert main(["info"]) == 2  # TARGET missing
    assert main(["no-such-command"]) == 2
    assert main(["generate", "--model", "x", "--prompt", "y", "--top-k", "many"]) == 2
    assert "usage:" in capsys.readouterr().err


def test_import_does_not_load_torch():
    # `plm --help` must answer at once: heavy imports belong inside the subcommand handlers.
    code = "import sys, plmkit, plmkit.cli; plmkit.cli.build_parser(); print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONPATH": str(SRC)})
    assert result.stdout.strip() == "False", result.stderr


# ---------------------------------------------------------------- errors


def test_user_error_is_one_line_and_exit_2(monkeypatch, capsys):
    def fail(**kwargs):
        raise ConfigError("first line\n  second line")

    fake_module(monkeypatch, "plmkit.demo", run_demo=fail)
    assert main(["demo"]) == 2
    captured = capsys.readouterr()
    assert captured.err == "error: first line second line\n"


def test_keyboard_interrupt_exits_130(monkeypatch, capsys):
    def interrupted(**kwargs):
        raise KeyboardInterrupt

    fake_module(monkeypatch, "plmkit.demo", run_demo=interrupted)
    assert main(["demo"]) == 130


def test_info_unknown_target_subprocess():
    result = run_plm("info", "nonexistent-thing")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "nonexistent-thing" in lines[0]


# ---------------------------------------------------------------- info


def test_info_suggests_a_preset(capsys):
    from plmkit.model.presets import PRESETS

    name = next(iter(PRESETS))
    assert main(["info", name + "x"]) == 2
    assert f'did you mean "{name}"' in capsys.readouterr().err


def test_info_preset_exact_parameter_count(capsys):
    assert main(["info", "gpt2-small"]) == 0
    out = capsys.readouterr().out
    assert "family: causal" in out and "n_layer: 12" in out
    assert "parameters: 124,439,808" in out.splitlines()  # GPT-2 small, tied embeddings counted once


def test_info_checkpoint_dir(tmp_path, capsys):
    import plmkit.io

    path = tiny_checkpoint(tmp_path / "ckpt")
    model, _ = plmkit.io.load(path)
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"parameters: {sum(p.numel() for p in model.parameters()):,}" in out
    assert "d_model: 32" in out and "vocab_size: 300" in out


# ---------------------------------------------------------------- generate / demo wiring


def test_generate_passes_options_and_prints_prompt_plus_completion(tmp_path, monkeypatch, capsys):
    calls = []

    def generate(model, tokenizer, prompt, **kwargs):
        calls.append((model, prompt, kwargs))
        return " world"

    fake_module(monkeypatch, "plmkit.generate", generate=generate, stream=None)
    path = tiny_checkpoint(tmp_path / "ckpt")
    argv = ["generate", "--model", str(path), "--prompt", "Hello", "--max-new-tokens", "5", "--sample",
            "--temperature", "0.7", "--top-k", "10", "--top-p", "0.9", "--seed", "3", "--stop", ".",
            "--stop", "\n", "--repetition-penalty", "1.2"]
    assert main(argv) == 0
    assert capsys.readouterr().out == "Hello world\n"
    (model, prompt, kwargs), = calls
    assert prompt == "Hello" and hasattr(model, "config")
    assert kwargs == dict(max_new_tokens=5, do_sample=True, temperature=0.7, top_k=10, top_p=0.9,
                          num_beams=1, repetition_penalty=1.2, seed=3, stop=(".", "\n"))


def test_generate_stream_prints_pieces(tmp_path, monkeypatch, capsys):
    def stream(model, tokenizer, prompt, **kwargs):
        assert kwargs["do_sample"] is False and kwargs["stop"] == ()
        yield from [" a", " b", " c"]

    fake_module(monkeypatch, "plmkit.generate", generate=None, stream=stream)
    path = tiny_checkpoint(tmp_path / "ckpt")
    assert main(["generate", "--model", str(path), "--prompt", "x", "--stream"]) == 0
    assert capsys.readouterr().out == "x a b c\n"


def test_generate_missing_model_dir(tmp_path, capsys):
    assert main(["generate", "--model", str(tmp_path / "missing"), "--prompt", "x"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "missing" in err and err.count("\n") == 1


def test_generate_end_to_end(tmp_path):
    from plmkit.tokenizer import Tokenizer

    tokenizer = Tokenizer.train_bpe(["hello world, hello there"] * 20, vocab_size=300)
    path = tiny_checkpoint(tmp_path / "ckpt", tokenizer)
    result = run_plm("generate", "--model", str(path), "--prompt", "hello", "--max-new-tokens", "4")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("hello")


def test_demo_passes_only_given_options(monkeypatch):
    calls = []
    fake_module(monkeypatch, "plmkit.demo", run_demo=lambda **kwargs: calls.append(kwargs))
    assert main(["demo"]) == 0
    assert main(["demo", "--steps", "3", "--out", "o", "--data", "d.txt"]) == 0
    assert calls == [{}, {"steps": 3, "out": "o", "data": "d.txt"}]
