"""Every command's --out (issue 13): never its own input (nor inside or above one), never an existing
checkpoint, model, run or non-empty folder without --overwrite, never a path under a regular file; written
into a temporary sibling renamed at the end, so that a failure (an error, Ctrl-C, a full disk) leaves
nothing. Each refusal is checked by hashing every file of the inputs and of the refused output before and
after ("nothing lost"); `plm export-peft` writes an adapter that the peft library loads."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import plmkit.io
from hashing import tree_hashes
from plmkit import peft
from plmkit.cli import main
from plmkit.model import build_model
from plmkit.train.checkpoint import save_checkpoint
from tiny import ROOT, SRC


def gpt2(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(
        "gpt2-tiny", vocab_size=300, d_model=32, n_layer=2, n_head=2, d_ff=64, max_positions=64
    )


def lora_model() -> torch.nn.Module:
    model = peft.apply(gpt2(), "lora", r=2, target="attn.qkv")
    with torch.no_grad():  # a trained adapter: B != 0
        for name, param in model.named_parameters():
            if "lora" in name:
                param.normal_(0, 0.1)
    return model


@pytest.fixture
def folders(tmp_path) -> dict[str, Path]:
    """A plmkit checkpoint, its Hugging Face export, a training checkpoint and a LoRA run's training
    checkpoint (model + adapter + training state)."""
    ckpt = plmkit.io.save(gpt2(), None, tmp_path / "ckpt")
    hf = tmp_path / "hf"
    assert main(["convert", "--to-hf", str(ckpt), "--out", str(hf)]) == 0
    state = {"optimizer": {"x": torch.ones(3)}}
    train = save_checkpoint(tmp_path / "run", 1, {"model": gpt2(1)}, None, state, {}, keep_last=2)
    lora = save_checkpoint(tmp_path / "lora-run", 1, {"model": lora_model()}, None, state, {}, keep_last=2)
    return {"ckpt": ckpt, "hf": hf, "train": train, "lora": lora}


def leftovers(*folders: Path) -> list[str]:
    """Temporary folders (.NAME.tmp-PID, .NAME.old-PID) beside or inside `folders`."""
    places = {p for f in folders for p in (f, f.parent) if p.is_dir()}
    return sorted(
        str(p) for place in places for p in place.iterdir() if ".tmp-" in p.name or ".old-" in p.name
    )


def refused(capsys, argv: list[str], match: str, *kept: Path) -> str:
    """`plm ARGV` exits 2 with one line `error: ...` containing `match`; every file below `kept` is unchanged."""
    before = tree_hashes(*kept)
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and match in err, err
    assert tree_hashes(*kept) == before
    assert leftovers(*kept) == []
    return err


# ---------------------------------------------------------------- the command's own input
def test_convert_to_hf_refuses_its_input_inside_and_above_it(folders, capsys, tmp_path):
    ckpt = folders["ckpt"]
    to_hf = ["convert", "--to-hf", str(ckpt), "--out"]
    refused(capsys, [*to_hf, str(ckpt)], "is the input", ckpt)
    refused(capsys, [*to_hf, str(ckpt), "--overwrite"], "--overwrite does not apply to inputs", ckpt)
    refused(capsys, [*to_hf, str(ckpt / "hf")], "is inside the input", ckpt)
    refused(capsys, [*to_hf, str(tmp_path), "--overwrite"], "contains the input", ckpt)
    (tmp_path / "link").symlink_to(ckpt)  # a symbolic link does not hide it
    refused(capsys, [*to_hf, str(tmp_path / "link")], "is the input", ckpt)


def test_merge_lora_out_equal_to_base_keeps_the_adapter_and_the_training_state(folders, capsys):
    lora = folders["lora"]
    assert (lora / "adapter_config.json").is_file() and (lora / "training_state.pt").is_file()
    refused(capsys, ["merge-lora", "--base", str(lora), "--out", str(lora)], "is the input", lora)
    refused(
        capsys,
        ["merge-lora", "--base", str(folders["ckpt"]), "--adapter", str(lora), "--out", str(lora / "m")],
        "is inside the input",
        lora,
        folders["ckpt"],
    )


def test_quantize_and_from_sharded_refuse_their_input(folders, capsys):
    ckpt, train = folders["ckpt"], folders["train"]
    refused(capsys, ["quantize", str(ckpt), "--int8", "--out", str(ckpt)], "is the input", ckpt)
    refused(capsys, ["convert", "--from-sharded", str(train), "--out", str(train)], "is the input", train)


def test_export_peft_refuses_its_input_and_one_folder_for_both_outputs(folders, capsys, tmp_path):
    lora = folders["lora"]
    refused(capsys, ["export-peft", str(lora), "--out", str(lora)], "is the input", lora)
    err = refused(
        capsys,
        ["export-peft", str(lora), "--out", str(tmp_path / "a"), "--base-out", str(tmp_path / "a" / "b")],
        "need folders of their own",
        lora,
    )
    assert "--base-out" in err and not (tmp_path / "a").exists()


def test_tokenizer_train_refuses_a_data_folder_and_an_existing_tokenizer(capsys, tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("the quick brown fox jumps over the lazy dog\n" * 50, encoding="utf-8")
    train = ["tokenizer", "train", "--data", str(corpus), "--vocab-size", "280", "--out"]
    refused(capsys, [*train, str(corpus)], "is the input", corpus)
    refused(capsys, [*train, str(tmp_path), "--overwrite"], "contains the input", corpus)
    assert main([*train, str(tmp_path / "tok")]) == 0
    refused(capsys, [*train, str(tmp_path / "tok")], "already exists and is not empty", tmp_path / "tok")
    assert main([*train, str(tmp_path / "tok"), "--overwrite"]) == 0
    assert leftovers(tmp_path / "tok") == []


# ---------------------------------------------------------------- existing folders: --overwrite
@pytest.mark.parametrize("command", ["from-hf", "quantize"])
def test_an_existing_training_checkpoint_is_replaced_only_with_overwrite(folders, capsys, command):
    train = folders["train"]
    argv = (
        ["convert", "--from-hf", str(folders["hf"]), "--out", str(train)]
        if command == "from-hf"
        else ["quantize", str(folders["ckpt"]), "--int8", "--out", str(train)]
    )
    source = folders["hf"] if command == "from-hf" else folders["ckpt"]
    err = refused(capsys, argv, "is a training checkpoint", train, source)
    assert "--overwrite" in err
    before = tree_hashes(source)
    assert main([*argv, "--overwrite"]) == 0
    assert tree_hashes(source) == before
    assert not (train / "training_state.pt").exists() and (train / "plmkit.json").is_file()
    assert leftovers(train) == []


def test_a_non_empty_folder_or_model_folder_needs_overwrite(folders, capsys, tmp_path):
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("mine")
    to_hf = ["convert", "--to-hf", str(folders["ckpt"]), "--out"]
    refused(capsys, [*to_hf, str(notes)], "is not empty (1 entries)", notes, folders["ckpt"])
    refused(
        capsys,
        [*to_hf, str(folders["hf"])],
        "is a checkpoint or model folder (it holds config.json)",
        folders["hf"],
    )
    refused(capsys, [*to_hf, str(tmp_path / "run")], "is a training run folder", tmp_path / "run")
    (tmp_path / "empty").mkdir()
    assert main([*to_hf, str(tmp_path / "empty")]) == 0  # an empty folder is no one's work
    assert main([*to_hf, str(notes), "--overwrite"]) == 0
    assert sorted(p.name for p in notes.iterdir()) == ["config.json", "model.safetensors"]


# ---------------------------------------------------------------- paths under a file
def test_an_out_under_a_regular_file_is_one_line(folders, capsys, tmp_path):
    (tmp_path / "file.txt").write_text("x")
    to_hf = ["convert", "--to-hf", str(folders["ckpt"]), "--out"]
    refused(capsys, [*to_hf, str(tmp_path / "file.txt")], "file.txt is a file, not a folder", folders["ckpt"])
    refused(capsys, [*to_hf, str(tmp_path / "file.txt" / "x" / "y")], "which is a file", folders["ckpt"])
    assert (tmp_path / "file.txt").read_text() == "x"


# ---------------------------------------------------------------- failures leave nothing
@pytest.mark.parametrize("failure", [KeyboardInterrupt, plmkit.errors.CheckpointError])
def test_a_failure_while_writing_leaves_neither_output_nor_temporary_folder(
    folders, capsys, tmp_path, monkeypatch, failure
):
    import plmkit.convert

    real = plmkit.convert.save_hf

    def half_then_fail(model, tokenizer, directory):
        real(model, tokenizer, directory)
        raise failure("interrupted")

    monkeypatch.setattr(plmkit.convert, "save_hf", half_then_fail)
    out = tmp_path / "out"
    code = main(["convert", "--to-hf", str(folders["ckpt"]), "--out", str(out)])
    assert code == (130 if failure is KeyboardInterrupt else 2)
    assert not out.exists() and leftovers(out) == []
    # With --overwrite, the folder being replaced survives a failure untouched.
    before = tree_hashes(folders["hf"])
    main(["convert", "--to-hf", str(folders["ckpt"]), "--out", str(folders["hf"]), "--overwrite"])
    assert tree_hashes(folders["hf"]) == before and leftovers(folders["hf"]) == []


def test_a_full_disk_while_converting_is_one_line_and_leaves_nothing(folders, tmp_path):
    """A subprocess whose files may not grow past 8 KiB (RLIMIT_FSIZE, SIGXFSZ ignored: EFBIG, as on a full
    disk; see tests/train_runner.py): `plm convert --to-hf` exits 2 with one line, the input intact."""
    ckpt, out = folders["ckpt"], tmp_path / "hf-out"
    before = tree_hashes(ckpt)
    env = {
        **os.environ,
        "PYTHONPATH": str(SRC),
        "OMP_NUM_THREADS": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PLMKIT_TEST_FILE_LIMIT": "8192",
    }
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "tests" / "train_runner.py"),
            "convert",
            "--to-hf",
            str(ckpt),
            "--out",
            str(out),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == (
        f"error: no space left on device while writing {out} (File too large, errno 27); nothing was "
        "written there; free some space and run it again\n"
    )
    assert not out.exists() and leftovers(out) == []
    assert tree_hashes(ckpt) == before
    plmkit.io.load(ckpt)


# ---------------------------------------------------------------- plm export-peft
@pytest.mark.slow  # imports transformers and peft
def test_export_peft_writes_an_adapter_that_peft_loads(folders, capsys, tmp_path):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    transformers = pytest.importorskip("transformers")
    peft_lib = pytest.importorskip("peft")
    lora = folders["lora"]
    before = tree_hashes(lora)
    adapter, base = tmp_path / "adapter", tmp_path / "base"
    assert main(["export-peft", str(lora), "--out", str(adapter), "--base-out", str(base)]) == 0
    assert "exported the LoRA adapter" in capsys.readouterr().out
    assert tree_hashes(lora) == before and leftovers(adapter, base) == []
    ours = plmkit.io.load(lora)[0]
    theirs = peft_lib.PeftModel.from_pretrained(
        transformers.AutoModelForCausalLM.from_pretrained(base), adapter
    ).eval()
    ids = torch.arange(3, 15).view(2, 6)
    with torch.no_grad():
        assert torch.allclose(theirs(input_ids=ids).logits, ours(input_ids=ids).logits, atol=1e-4)
    refused(capsys, ["export-peft", str(lora), "--out", str(adapter)], "already exists", adapter, lora)
    refused(
        capsys, ["export-peft", str(folders["ckpt"]), "--out", str(tmp_path / "x")], "lora", folders["ckpt"]
    )
    assert not (tmp_path / "x").exists()
