"""plmkit.files: the one output rule (check_output_folder), folders under a regular file (make_folder, for
a run's out_dir too) and a full disk (DiskFullError, nothing left behind)."""

from __future__ import annotations

import errno

import pytest

from hashing import tree_hashes
from plmkit.errors import ConfigError, DiskFullError, OutputError
from plmkit.files import (
    atomic_file,
    atomic_folder,
    check_output_folder,
    disk_full_errno,
    make_folder,
    output_folder,
)


def test_the_output_rule(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "plmkit.json").write_text("{}")
    for out, relation in [(src, "is"), (src / "a" / "b", "is inside"), (tmp_path, "contains")]:
        for overwrite in (False, True):
            with pytest.raises(OutputError, match=f" {relation} the input "):
                check_output_folder(out, [src], overwrite)
    with pytest.raises(OutputError, match="is the input"):  # `..` does not hide it
        check_output_folder(tmp_path / "x" / ".." / "src", [src])
    with pytest.raises(OutputError, match="a checkpoint or model folder"):
        check_output_folder(src)
    check_output_folder(src, overwrite=True)  # not an input: --overwrite replaces it
    check_output_folder(tmp_path / "new", [src])
    (tmp_path / "empty").mkdir()
    check_output_folder(tmp_path / "empty", [src])
    assert issubclass(OutputError, ConfigError)  # `except ConfigError` callers keep working


def test_a_folder_under_a_regular_file(tmp_path):
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(OutputError, match=r"out_dir .*f\.txt/run is under .*f\.txt, which is a file"):
        make_folder(tmp_path / "f.txt" / "run", "out_dir")  # what a recipe calls for its run folder
    with pytest.raises(OutputError, match="is a file, not a folder"):
        make_folder(tmp_path / "f.txt")
    assert make_folder(tmp_path / "a" / "b").is_dir()


def test_a_full_disk_in_an_atomic_folder_leaves_nothing(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "plmkit.json").write_text("old")
    before = tree_hashes(tmp_path)
    with pytest.raises(DiskFullError, match=r"no space left on device while writing .*out \(No space"):
        with output_folder(tmp_path / "out", overwrite=True) as tmp:
            (tmp / "model.safetensors").write_bytes(b"half")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert tree_hashes(tmp_path) == before and sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    with pytest.raises(KeyboardInterrupt), atomic_folder(tmp_path / "new"):
        raise KeyboardInterrupt
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_disk_full_is_recognised_through_wrapping_libraries():
    assert disk_full_errno(OSError(errno.EFBIG, "File too large")) == errno.EFBIG
    wrapped = RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)")
    assert disk_full_errno(wrapped) == errno.ENOSPC  # safetensors, tokenizers (Rust)
    try:
        try:
            raise OSError(errno.ENOSPC, "full")
        except OSError:
            raise RuntimeError("unexpected pos 576 vs 534")  # noqa: B904 (torch.save to a file object: context only)
    except RuntimeError as e:
        assert disk_full_errno(e) == errno.ENOSPC
    assert disk_full_errno(OSError(errno.EACCES, "denied")) is None


def test_an_atomic_file_replaces_its_target_only_when_complete(tmp_path):
    target = tmp_path / "vectors.jsonl"
    target.write_bytes(b"old\n")
    with pytest.raises(KeyboardInterrupt):
        with atomic_file(target) as f:
            f.write(b"half")
            raise KeyboardInterrupt
    assert target.read_bytes() == b"old\n" and [p.name for p in tmp_path.iterdir()] == ["vectors.jsonl"]
    with atomic_file(target) as f:
        f.write(b"new\n")
    assert target.read_bytes() == b"new\n" and [p.name for p in tmp_path.iterdir()] == ["vectors.jsonl"]
