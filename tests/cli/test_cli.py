"""The `plm` command line: subcommand wiring, exit codes, one-line errors."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import types
from pathlib import Path

import plmkit
from plmkit.cli import main
from plmkit.errors import ConfigError
from tiny import SRC


def run_plm(*args: str) -> subprocess.CompletedProcess:
    """`python -m plmkit ARGS` in a fresh interpreter (how a user runs it)."""
    paths = [str(SRC), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
    return subprocess.run(
        [sys.executable, "-m", "plmkit", *args], capture_output=True, text=True, env=env, timeout=120
    )


def tiny_checkpoint(directory: Path, tokenizer=None) -> Path:
    import plmkit.io
    from plmkit.model import build_model

    vocab = tokenizer.vocab_size if tokenizer is not None else 300
    model = build_model(
        "gpt2-tiny", vocab_size=vocab, d_model=32, n_layer=2, n_head=2, d_ff=64, max_positions=64
    )
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
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 3 and all(
        line.startswith("error: ") for line in lines
    )  # one line each, no usage block
    assert lines[0] == "error: plm info: the following arguments are required: TARGET; see plm info --help"


def test_import_does_not_load_torch():
    # `plm --help` must answer at once: heavy imports belong inside the subcommand handlers.
    code = "import sys, plmkit, plmkit.cli; plmkit.cli.build_parser(); print('torch' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(SRC)},
    )
    assert result.stdout.strip() == "False", result.stderr


# ---------------------------------------------------------------- errors


def test_user_error_is_one_line_and_exit_2(monkeypatch, capsys):
    def fail(*args, **kwargs):
        raise ConfigError("first line\n  second line")

    fake_module(monkeypatch, "plmkit.recipes.demo", run_demo=fail)
    assert main(["demo"]) == 2
    captured = capsys.readouterr()
    assert captured.err == "error: first line second line\n"


def test_keyboard_interrupt_exits_130(monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    fake_module(monkeypatch, "plmkit.recipes.demo", run_demo=interrupted)
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

    def generate(model, tokenizer, prompt, return_finish=False, **kwargs):
        calls.append((model, prompt, kwargs))
        assert return_finish  # the CLI reports why the text ended
        return " world", "[stopped at max_new_tokens=5]"

    fake_module(monkeypatch, "plmkit.generation", generate=generate, stream=None)
    path = tiny_checkpoint(tmp_path / "ckpt")
    argv = [
        "generate",
        "--model",
        str(path),
        "--prompt",
        "Hello",
        "--max-new-tokens",
        "5",
        "--sample",
        "--temperature",
        "0.7",
        "--top-k",
        "10",
        "--top-p",
        "0.9",
        "--seed",
        "3",
        "--stop",
        ".",
        "--stop",
        "\n",
        "--repetition-penalty",
        "1.2",
        "--dtype",
        "bf16",
    ]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert captured.out == "Hello world\n" and captured.err == "[stopped at max_new_tokens=5]\n"
    ((model, prompt, kwargs),) = calls
    assert prompt == "Hello" and hasattr(model, "config")
    assert kwargs == dict(
        max_new_tokens=5,
        do_sample=True,
        temperature=0.7,
        top_k=10,
        top_p=0.9,
        num_beams=1,
        repetition_penalty=1.2,
        seed=3,
        stop=(".", "\n"),
        dtype="bf16",
    )


def test_generate_stream_prints_pieces(tmp_path, monkeypatch, capsys):
    class Pieces(list):
        finish = "[stopped at end-of-text after 3 tokens]"

    def stream(model, tokenizer, prompt, **kwargs):
        assert kwargs["do_sample"] is False and kwargs["stop"] == ()
        return Pieces([" a", " b", " c"])

    fake_module(monkeypatch, "plmkit.generation", generate=None, stream=stream)
    path = tiny_checkpoint(tmp_path / "ckpt")
    assert main(["generate", "--model", str(path), "--prompt", "x", "--stream"]) == 0
    captured = capsys.readouterr()
    assert captured.out == "x a b c\n" and captured.err == "[stopped at end-of-text after 3 tokens]\n"


def test_generate_missing_model_dir(tmp_path, capsys):
    assert main(["generate", "--model", str(tmp_path / "missing"), "--prompt", "x"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "missing" in err and err.count("\n") == 1


def test_generate_end_to_end(tmp_path):
    from plmkit.tokenizer import Tokenizer

    tokenizer = Tokenizer.train_bpe(["hello world, hello there"] * 20, vocab_size=300)
    path = tiny_checkpoint(tmp_path / "ckpt", tokenizer)
    result = run_plm(
        "generate", "--model", str(path), "--prompt", "hello", "--max-new-tokens", "4", "--dtype", "int8"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("hello")


def test_demo_passes_overrides(monkeypatch):
    calls = []
    fake_module(monkeypatch, "plmkit.recipes.demo", run_demo=lambda overrides: calls.append(overrides))
    assert main(["demo"]) == 0
    assert main(["demo", "train.steps=3", "out_dir=o", "data=d.txt"]) == 0
    assert calls == [[], ["train.steps=3", "out_dir=o", "data=d.txt"]]


def _one_error_line(capsys) -> str:
    captured = capsys.readouterr()
    assert captured.err.startswith("error: ") and captured.err.count("\n") == 1, captured.err
    assert "Traceback" not in captured.err
    return captured.err


def test_generate_past_max_positions_exits_2(tmp_path, capsys):
    from plmkit.tokenizer import Tokenizer

    tokenizer = Tokenizer.train_bpe(["hello world, hello there"] * 20, vocab_size=300)
    path = tiny_checkpoint(tmp_path / "ckpt", tokenizer)  # max_positions=64
    assert main(["generate", "--model", str(path), "--prompt", "hello", "--max-new-tokens", "100"]) == 2
    assert "max_positions" in _one_error_line(capsys)


def test_generate_tokenizer_bigger_than_model_vocab_exits_2(tmp_path, capsys):
    import plmkit.io
    from plmkit.model import build_model
    from plmkit.tokenizer import Tokenizer

    tokenizer = Tokenizer.train_bpe(["hello world, hello there"] * 20, vocab_size=300)
    model = build_model(
        "gpt2-tiny", vocab_size=260, d_model=32, n_layer=2, n_head=2, d_ff=64, max_positions=64
    )
    plmkit.io.save(model, tokenizer, tmp_path / "ckpt")
    assert main(["generate", "--model", str(tmp_path / "ckpt"), "--prompt", "hello there world"]) == 2
    assert "vocab" in _one_error_line(capsys)


def test_convert_round_trip_via_cli(tmp_path, capsys):
    from plmkit.tokenizer import Tokenizer

    tokenizer = Tokenizer.train_bpe(["hello world, hello there"] * 20, vocab_size=300)
    path = tiny_checkpoint(tmp_path / "ckpt", tokenizer)
    assert main(["convert", "--to-hf", str(path), "--out", str(tmp_path / "hf")]) == 0
    assert (tmp_path / "hf" / "config.json").is_file()
    assert main(["convert", "--from-hf", str(tmp_path / "hf"), "--out", str(tmp_path / "back")]) == 0
    assert "converted" in capsys.readouterr().out
    import plmkit.io

    (a, _), (b, _) = plmkit.io.load(path), plmkit.io.load(tmp_path / "back")
    assert all((x - y).abs().max() == 0 for x, y in zip(a.state_dict().values(), b.state_dict().values()))


# ---------------------------------------------------------------- tokenizer train

_TOK_LINES = [
    "the quick brown fox jumps over the lazy dog",
    "今天天气真好，我们一起出去玩吧",
    "players played unbelievable games today",
    "今天天气不好，我们在家读书",
]


def _corpus_files(root: Path) -> Path:
    """root/ with a.txt, b.jsonl, c.txt.gz and d.jsonl.gz (plus a README the folder walk ignores)."""
    import gzip
    import json

    root.mkdir(parents=True, exist_ok=True)
    (root / "a.txt").write_text("\n".join(_TOK_LINES * 5) + "\n\n", encoding="utf-8")
    jsonl = "".join(
        json.dumps({"id": i, "body": t}, ensure_ascii=False) + "\n" for i, t in enumerate(_TOK_LINES)
    )
    (root / "b.jsonl").write_text(jsonl, encoding="utf-8")
    (root / "c.txt.gz").write_bytes(gzip.compress("龘 only in the gzip file\n".encode()))
    (root / "d.jsonl.gz").write_bytes(gzip.compress(jsonl.encode()))
    (root / "README.md").write_text("not training text")
    return root


def test_tokenizer_train_from_files_folder_and_glob(tmp_path, capsys):
    from plmkit.tokenizer import Tokenizer

    data = _corpus_files(tmp_path / "data")
    files = [str(data / n) for n in ("a.txt", "b.jsonl", "c.txt.gz", "d.jsonl.gz")]
    for name, sources, kind in [
        ("files", files, "wordpiece"),
        ("folder", [str(data)], "bpe"),
        ("glob", [str(data / "*.gz"), str(data / "a.*")], "unigram"),
    ]:
        out = tmp_path / name
        argv = [
            "tokenizer",
            "train",
            "--data",
            *sources,
            "--kind",
            kind,
            "--vocab-size",
            "300",
            "--out",
            str(out),
            "--text-field",
            "body",
            "--sentinels",
            "4",
        ]
        assert main(argv) == 0, capsys.readouterr().err
        summary = capsys.readouterr().out
        assert summary.count("\n") == 1 and kind in summary and str(out / "tokenizer.json") in summary
        assert (out / "tokenizer.json").is_file() and (out / "tokenizer_config.json").is_file()
        tok = Tokenizer.load(out)
        assert tok.decode(tok.encode("龘")) == "龘"  # from the .gz file
        assert str(tok.vocab_size) in summary
    wordpiece = Tokenizer.load(tmp_path / "files")
    assert [wordpiece.id_to_token(i) for i in wordpiece.encode("今天天气真好")] == list("今天天气真好")
    assert wordpiece.cls_id is not None  # default family for wordpiece: bert
    assert (
        Tokenizer.load(tmp_path / "glob").sentinel_ids(4)[0]
        == Tokenizer.load(tmp_path / "glob").vocab_size - 1
    )


def test_tokenizer_train_family_picks_kind_and_tokens(tmp_path, capsys):
    from plmkit.tokenizer import Tokenizer

    data = _corpus_files(tmp_path / "data")
    argv = [
        "tokenizer",
        "train",
        "--data",
        str(data / "a.txt"),
        "--family",
        "glm",
        "--vocab-size",
        "200",
        "--out",
        str(tmp_path / "glm"),
        "--min-frequency",
        "1",
    ]
    assert main(argv) == 0
    assert "wordpiece" in capsys.readouterr().out
    tok = Tokenizer.load(tmp_path / "glm")
    assert tok.special_token_id("[gMASK]") in tok.all_special_ids


def test_tokenizer_without_action_prints_help_and_exits_2(capsys):
    assert main(["tokenizer"]) == 2
    err = capsys.readouterr().err
    assert "usage: plm tokenizer" in err and "train" in err


def _bad_inputs(root: Path) -> dict[str, tuple[list[str], str]]:
    root.mkdir()
    (root / "empty.txt").write_text("\n  \n")
    (root / "bad.txt").write_bytes("fine line\n第二行\nbroken ".encode() + b"\xff\xfe here\n")
    (root / "bad.jsonl").write_text('{"text": "ok"}\n{"text": \n')
    (root / "notext.jsonl").write_text('{"txt": "ok"}\n')
    (root / "good.txt").write_text("hello world\n" * 5)
    (root / "data.csv").write_text("a,b\n")
    return {  # case -> (--data and extra args, text the error line must contain)
        "missing file": ([str(root / "nope.txt")], "nope.txt: no such file or folder"),
        "empty file": ([str(root / "empty.txt")], "empty.txt: the file has no documents"),
        "invalid utf-8": ([str(root / "good.txt"), str(root / "bad.txt")], "bad.txt:3: invalid UTF-8"),
        "malformed jsonl": ([str(root / "bad.jsonl")], "bad.jsonl:2: malformed JSON"),
        "missing field": (
            [str(root / "notext.jsonl")],
            'notext.jsonl:1: no field "text" (did you mean "txt"?)',
        ),
        "glob matches nothing": ([str(root / "*.parquet")], "the glob matches no files"),
        "csv without the text column": ([str(root / "data.csv")], 'data.csv:1: no column "text"'),
        "unknown kind": ([str(root / "good.txt"), "--kind", "wordpeice"], 'did you mean "wordpiece"'),
        "unknown family": ([str(root / "good.txt"), "--family", "bret"], 'did you mean "bert"'),
        "vocab too small": ([str(root / "good.txt"), "--vocab-size", "10"], "vocab_size=10 is too small"),
    }


def test_tokenizer_train_bad_input_exits_2_with_one_line(tmp_path, capsys):
    for case, (args, expected) in _bad_inputs(tmp_path / "bad").items():
        argv = ["tokenizer", "train", "--vocab-size", "300", "--out", str(tmp_path / "out"), "--data", *args]
        assert main(argv) == 2, case
        line = _one_error_line(capsys)
        assert expected in line, (case, line)
    assert not (tmp_path / "out").exists()  # nothing written on error


def test_tokenizer_train_error_subprocess(tmp_path):
    (tmp_path / "bad.txt").write_bytes(b"ok\n\xff\n")
    result = run_plm(
        "tokenizer",
        "train",
        "--data",
        str(tmp_path / "bad.txt"),
        "--vocab-size",
        "300",
        "--out",
        str(tmp_path / "out"),
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {tmp_path / 'bad.txt'}:2: invalid UTF-8")


# ---------------------------------------------------------------- recipe commands (plmkit.recipes.RECIPES)


def test_every_registered_recipe_is_a_command_with_the_same_options(capsys):
    from plmkit.recipes import RECIPES

    assert "pretrain" in RECIPES
    for name, recipe in RECIPES.items():
        assert main([name, "--help"]) == 0
        out = capsys.readouterr().out
        assert "RECIPE.yaml" in out and "--resume" in out and "--nproc" in out
        config_class, run = recipe.load_config_class(), recipe.load_run()
        assert "resume" in config_class.__dataclass_fields__ and callable(run)


def _fake_recipe(monkeypatch, tmp_path) -> tuple[list, Path]:
    """A registry entry `toy` whose config is a small dataclass and whose run records its config."""
    from plmkit.recipes import RECIPES, Recipe

    calls = []
    fake_module(
        monkeypatch,
        "toy_recipe",
        ToyConfig=ToyConfig,
        run=lambda config: calls.append(config) or {"ok": 1},
        validate=lambda config: None,
    )
    monkeypatch.setitem(
        RECIPES,
        "toy",
        Recipe(
            help="a toy",
            description="A toy recipe.",
            config_class="toy_recipe:ToyConfig",
            run="toy_recipe:run",
            validate="toy_recipe:validate",
        ),
    )
    path = tmp_path / "toy.yaml"
    path.write_text("steps: 3\n")
    return calls, path


@dataclasses.dataclass
class ToyTrain:
    device: str = "cpu"


@dataclasses.dataclass
class ToyConfig:
    steps: int = 1
    resume: bool | str = False
    train: ToyTrain = dataclasses.field(default_factory=ToyTrain)
    distributed: dict = dataclasses.field(default_factory=dict)  # what launch_recipe hands strategy_name


def test_a_new_registry_entry_is_a_command(monkeypatch, tmp_path, capsys):
    calls, path = _fake_recipe(monkeypatch, tmp_path)
    assert main(["toy", str(path), "steps=5"]) == 0
    assert main(["toy", str(path), "--resume"]) == 0
    assert main(["toy", str(path), "--resume", "runs/x/checkpoints/step-00000002", "--nproc", "1"]) == 0
    assert [(c.steps, c.resume) for c in calls] == [
        (5, False),
        (3, True),
        (3, "runs/x/checkpoints/step-00000002"),
    ]
    assert capsys.readouterr().out == '{"ok": 1}\n' * 3  # the run's result as JSON


def test_a_recipe_command_reports_bad_keys_and_bad_nproc_before_running(monkeypatch, tmp_path, capsys):
    calls, path = _fake_recipe(monkeypatch, tmp_path)
    assert main(["toy", str(path), "step=5"]) == 2
    assert 'did you mean "steps"' in _one_error_line(capsys)
    assert main(["toy", str(path), "--nproc", "two"]) == 2
    assert _one_error_line(capsys) == 'error: --nproc="two" must be a whole number >= 1\n'
    assert main(["toy", str(path), "--nproc", "0"]) == 2
    assert _one_error_line(capsys) == "error: --nproc=0 is out of range: must be >= 1\n"
    assert calls == []


def test_nproc_above_1_launches_the_same_command_line(monkeypatch, tmp_path):
    """`plm NAME RECIPE ... --nproc N` checks the recipe, then starts N workers running the command
    without --nproc (torchrun itself is covered by tests/test_dist_*.py)."""
    import plmkit.train.distributed.build as base
    import plmkit.train.distributed.launch as launch

    calls, path = _fake_recipe(monkeypatch, tmp_path)
    started = []
    monkeypatch.setattr(launch, "launch", lambda nproc, argv: started.append((nproc, list(argv))) or 7)
    monkeypatch.setattr(base, "strategy_name", lambda config, world: "ddp")
    assert main(["toy", str(path), "steps=4", "--resume", "--nproc", "2"]) == 7  # the workers' exit code
    assert started == [(2, ["toy", str(path), "steps=4", "--resume"])] and calls == []


def test_launch_recipe_runs_here_without_nproc_or_with_1():
    from plmkit.train.distributed.launch import launch_recipe

    assert launch_recipe(None, ToyConfig(), ["toy"]) is None
    assert launch_recipe("1", ToyConfig(), ["toy"]) is None


def test_overrides_anywhere_after_the_recipe_and_a_bare_resume(monkeypatch, tmp_path):
    """`--resume steps=7` resumes the latest checkpoint and overrides steps (a key=value is never the
    checkpoint); overrides may follow --nproc and --resume."""
    calls, path = _fake_recipe(monkeypatch, tmp_path)
    assert main(["toy", str(path), "--resume", "steps=7"]) == 0
    assert (
        main(["toy", str(path), "--nproc", "1", "steps=8", "--resume", "runs/lr=3e-4/step-1", "steps=9"]) == 0
    )
    assert main(["toy", str(path), "steps=4", "--resume"]) == 0
    assert [(c.steps, c.resume) for c in calls] == [(7, True), (9, "runs/lr=3e-4/step-1"), (4, True)]


def test_ctrl_c_during_a_run_prints_the_command_that_resumes_it(monkeypatch, tmp_path, capsys):
    _, path = _fake_recipe(monkeypatch, tmp_path)

    def interrupted(config):
        raise KeyboardInterrupt

    sys.modules["toy_recipe"].run = interrupted
    assert main(["toy", str(path), "steps=5", "--resume", "steps=6"]) == 130
    err = capsys.readouterr().err
    assert err == f"interrupted; resume with: plm toy {path} steps=5 steps=6 --resume\n"


def test_the_resume_hint_follows_the_run_folder(tmp_path):
    """With a checkpoint: --resume; before the first one: the same command, with --overwrite once the
    folder holds files (a plain --resume would be refused there)."""
    import argparse

    from plmkit.cli.recipes import again

    args = argparse.Namespace(
        recipe_name="pretrain",
        recipe_file="r.yaml",
        overrides=["a=1"],
        nproc="2",
        resume=None,
        overwrite=False,
    )
    config = types.SimpleNamespace(run_dir=str(tmp_path / "run"))
    assert (
        again(args, config)
        == "no checkpoint was written yet; start again with: plm pretrain r.yaml a=1 --nproc 2"
    )
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "recipe.json").write_text("{}")
    assert again(args, config).endswith("plm pretrain r.yaml a=1 --overwrite --nproc 2")
    step = tmp_path / "run" / "checkpoints" / "step-00000002"
    step.mkdir(parents=True)
    (step / "trainer_state.json").write_text('{"step": 2}')
    assert again(args, config) == "resume with: plm pretrain r.yaml a=1 --resume --nproc 2"


def test_ctrl_c_under_the_launcher_is_an_interrupt(monkeypatch):
    """torchrun's agent turns Ctrl-C into a SignalException (or a worker exits 130): both are Ctrl-C."""
    import signal

    import pytest
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException

    from plmkit.train.distributed.launch import launch

    def signalled(args):
        raise SignalException("got signal", sigval=signal.SIGINT)

    monkeypatch.setattr(torchrun, "run", signalled)
    with pytest.raises(KeyboardInterrupt):
        launch(2, ["toy", "r.yaml"])


def test_nproc_above_the_cpu_cores_warns_once(monkeypatch, capsys):
    import plmkit.train.distributed.launch as launch
    import plmkit.train.logging as logging

    monkeypatch.setattr(logging, "_warned", set())
    monkeypatch.setattr(launch, "cpu_cores", lambda: 2)
    launch.warn_oversubscribed(2, 0)
    assert capsys.readouterr().err == ""
    launch.warn_oversubscribed(3, 0)
    launch.warn_oversubscribed(3, 0)
    err = capsys.readouterr().err
    assert (
        err == "warning: --nproc 3 is more than the 2 CPU core(s) this process may use: the training "
        "processes will share them and run slower than --nproc 2 would\n"
    )
    assert launch.cpu_cores() >= 1


def test_demo_overwrite_flag_is_an_override(monkeypatch):
    calls = []
    fake_module(monkeypatch, "plmkit.recipes.demo", run_demo=lambda overrides: calls.append(overrides))
    assert main(["demo", "data=d.txt", "--overwrite", "train.steps=3"]) == 0
    assert calls == [["data=d.txt", "train.steps=3", "overwrite=true"]]
