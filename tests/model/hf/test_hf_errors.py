"""Broken Hugging Face folders fail loudly: one CheckpointError that names the file or tensor.

Each test starts from a valid folder written by plmkit's own `save_hf` (a tiny LLaMA-style model, so
transformers is not needed here) and breaks one thing. The `plm convert --from-hf` command turns the
same errors into a single `error: ...` line and exit code 2, without a traceback, and writes nothing.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import plmkit.io
from plmkit.cli import main
from plmkit.errors import CheckpointError
from plmkit.model import build_model
from plmkit.model.hf import load_hf, save_hf
from tiny import SRC

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


WEIGHTS = "model.safetensors"
Q_PROJ = "model.layers.0.self_attn.q_proj.weight"
DOWN_PROJ = "model.layers.1.mlp.down_proj.weight"


def tiny_llama():
    torch.manual_seed(0)
    return build_model(
        "llama-tiny", vocab_size=64, d_model=32, n_layer=2, n_head=4, n_kv_head=2, d_ff=64, max_positions=64
    ).eval()


@pytest.fixture
def good(tmp_path) -> Path:
    folder = tmp_path / "hf"
    save_hf(tiny_llama(), None, folder)
    assert (folder / "config.json").is_file() and (folder / WEIGHTS).is_file()
    return folder


def edit_config(folder: Path, **changes) -> dict:
    config = json.loads((folder / "config.json").read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    (folder / "config.json").write_text(json.dumps(config))
    return config


def edit_weights(folder: Path, change) -> None:
    tensors = load_file(folder / WEIGHTS)
    change(tensors)
    save_file(tensors, folder / WEIGHTS, metadata={"format": "pt"})


def shard(folder: Path) -> list[str]:
    """Split model.safetensors into two shards + index (the layout save_pretrained writes for big models)."""
    tensors = load_file(folder / WEIGHTS)
    names = sorted(tensors)
    half = len(names) // 2
    files = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    weight_map = {}
    for file, part in zip(files, (names[:half], names[half:])):
        save_file({n: tensors[n] for n in part}, folder / file, metadata={"format": "pt"})
        weight_map |= {n: file for n in part}
    (folder / WEIGHTS).unlink()
    index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    return files


# ---- the broken folders: (break it, words the message must contain) --------------------------------
def _no_config(folder: Path) -> list[str]:
    (folder / "config.json").unlink()
    return [str(folder), "config.json"]


def _no_model_type(folder: Path) -> list[str]:
    edit_config(folder, model_type=None)
    return [str(folder / "config.json"), "model_type"]


def _unknown_model_type(folder: Path) -> list[str]:
    edit_config(folder, model_type="lama")
    return ["lama", 'did you mean "llama"', "gpt2", "bert", "roberta", "bart", "t5", "llama", "qwen2"]


def _invalid_json(folder: Path) -> list[str]:
    (folder / "config.json").write_text('{"model_type": "llama",')
    return [str(folder / "config.json"), "JSON"]


def _no_weights(folder: Path) -> list[str]:
    (folder / WEIGHTS).unlink()
    return [str(folder), "model.safetensors", "pytorch_model.bin"]


def _truncated(folder: Path) -> list[str]:
    data = (folder / WEIGHTS).read_bytes()
    (folder / WEIGHTS).write_bytes(data[: len(data) // 2])
    return [str(folder / WEIGHTS), "truncated"]


def _wrong_shape(folder: Path) -> list[str]:
    edit_weights(folder, lambda t: t.__setitem__(Q_PROJ, torch.zeros(16, 32)))
    return [Q_PROJ, "[16, 32]", "shape"]


def _wrong_shape_norm(folder: Path) -> list[str]:
    edit_weights(folder, lambda t: t.__setitem__("model.norm.weight", torch.ones(31)))
    return ["model.norm.weight", "[31]", "[32]"]


def _missing_tensor(folder: Path) -> list[str]:
    edit_weights(folder, lambda t: t.pop(DOWN_PROJ))
    return [DOWN_PROJ, "missing"]


def _missing_shard(folder: Path) -> list[str]:
    files = shard(folder)
    (folder / files[1]).unlink()
    return [files[1], "model.safetensors.index.json", "missing"]


def _truncated_bin(folder: Path) -> list[str]:
    tensors = load_file(folder / WEIGHTS)
    (folder / WEIGHTS).unlink()
    torch.save(tensors, folder / "pytorch_model.bin")
    data = (folder / "pytorch_model.bin").read_bytes()
    (folder / "pytorch_model.bin").write_bytes(data[: len(data) // 2])
    return [str(folder / "pytorch_model.bin")]


BROKEN = {
    "no config.json": _no_config,
    "no model_type": _no_model_type,
    "unknown model_type": _unknown_model_type,
    "config.json not JSON": _invalid_json,
    "no weight file": _no_weights,
    "truncated safetensors": _truncated,
    "wrong shape": _wrong_shape,
    "wrong shape (unfused tensor)": _wrong_shape_norm,
    "missing tensor": _missing_tensor,
    "index names a missing shard": _missing_shard,
    "truncated pytorch_model.bin": _truncated_bin,
}


def test_the_good_folder_loads(good):
    model, tokenizer = load_hf(good)  # the control: every break below is the only thing wrong
    reference = tiny_llama()
    ids = torch.tensor([[1, 5, 9, 3]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, reference(ids).logits)
    assert tokenizer is None


@pytest.mark.parametrize("case", list(BROKEN))
def test_broken_folder_raises_one_clear_checkpoint_error(good, case):
    words = BROKEN[case](good)
    with pytest.raises(CheckpointError) as info:
        load_hf(good)
    message = str(info.value)
    for word in words:
        assert word in message, f"{case}: {word!r} not in {message!r}"
    assert "\n" not in message.strip()


@pytest.mark.parametrize(
    "case", ["no model_type", "wrong shape", "missing tensor", "index names a missing shard"]
)
def test_io_load_reports_the_same_error(good, case):
    words = BROKEN[case](good)
    with pytest.raises(CheckpointError) as info:
        plmkit.io.load(good)  # auto-detects the Hugging Face folder, then fails the same way
    assert all(word in str(info.value) for word in words)


def test_unknown_model_type_without_close_match_lists_supported(good):
    edit_config(good, model_type="whisper")
    with pytest.raises(CheckpointError) as info:
        load_hf(good)
    message = str(info.value)
    assert "whisper" in message and "supported" in message and "llama" in message
    assert "did you mean" not in message


def test_sharded_folder_loads_when_complete(good):
    shard(good)
    model, _ = load_hf(good)
    ids = torch.tensor([[1, 5, 9, 3]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, tiny_llama()(ids).logits)


def test_pickled_code_in_pytorch_model_bin_is_refused_not_run(good, tmp_path):
    marker = tmp_path / "pwned"

    class Payload:  # unpickling this would create the marker file
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (good / WEIGHTS).unlink()
    (good / "pytorch_model.bin").write_bytes(
        pickle.dumps({"model.embed_tokens.weight": Payload()}, protocol=2)
    )
    with pytest.raises(CheckpointError, match="pytorch_model.bin"):
        load_hf(good)
    assert not marker.exists()


# ---- the CLI: `plm convert --from-hf DIR --out DIR` -----------------------------------------------
def test_convert_round_trip(good, tmp_path, capsys):
    assert main(["convert", "--from-hf", str(good), "--out", str(tmp_path / "ckpt")]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and str(tmp_path / "ckpt") in out[0]
    model, _ = plmkit.io.load(tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / "plmkit.json").is_file()
    assert main(["convert", "--to-hf", str(tmp_path / "ckpt"), "--out", str(tmp_path / "hf2")]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 1
    back, _ = load_hf(tmp_path / "hf2")
    ids = torch.tensor([[1, 5, 9, 3]])
    with torch.no_grad():
        assert torch.equal(back(ids).logits, model(ids).logits)


@pytest.mark.parametrize("case", list(BROKEN))
def test_convert_broken_folder_prints_one_error_line(good, tmp_path, case, capsys):
    words = BROKEN[case](good)
    out = tmp_path / "out"
    assert main(["convert", "--from-hf", str(good), "--out", str(out)]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert "Traceback" not in captured.err + captured.out
    assert all(word in lines[0] for word in words), lines[0]
    assert not out.exists()  # nothing half-written


def test_convert_missing_folder(tmp_path, capsys):
    assert main(["convert", "--from-hf", str(tmp_path / "nope"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(tmp_path / "nope") in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("case", ["unknown model_type", "wrong shape"])
def test_convert_error_in_a_fresh_process(good, tmp_path, case):
    """How a user runs it: `python -m plmkit convert ...`; stderr is one line, no traceback."""
    words = BROKEN[case](good)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in (str(SRC), os.environ.get("PYTHONPATH")) if p),
    }
    result = subprocess.run(
        [sys.executable, "-m", "plmkit", "convert", "--from-hf", str(good), "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    assert all(word in lines[0] for word in words)
