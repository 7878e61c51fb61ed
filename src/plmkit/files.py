"""Files: output folders (checked, written atomically), JSON reading with a named error, step-folder names.

Every folder plmkit writes (a checkpoint, a converted model, a training checkpoint) is assembled under a
hidden temporary sibling and renamed into place only when complete, so a crash, Ctrl-C or a full disk
never leaves a half-written folder (nor the temporary one) and never destroys the previous one.

A command's output folder (`--out`) follows one rule, `check_output_folder`: never one of the command's
inputs (nor inside or above one), and no existing checkpoint, model, run or other non-empty folder unless
`overwrite` (`--overwrite`). `output_folder` checks it and writes atomically:

    with output_folder(out, inputs=[checkpoint], overwrite=False, what="--out") as tmp:
        ...write files into tmp...                    # renamed to `out` when the block ends
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from plmkit.errors import CheckpointError, DiskFullError, OutputError

DISK_FULL = (
    errno.ENOSPC,
    errno.EFBIG,
)  # no space left; file larger than the file system or `ulimit -f` allow
# Files that make a folder a model, checkpoint or run folder (the names of plmkit.io, plmkit.train.checkpoint,
# plmkit.peft.io and transformers; spelled here because this module sits below all of them).
PRECIOUS_FILES = (
    "plmkit.json",
    "config.json",
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "training_state.pt",
    "trainer_state.json",
    "adapter_config.json",
    "recipe.json",
)
PRECIOUS_FOLDERS = ("checkpoints",)  # a training run folder


def step_folder_name(step: int) -> str:
    """The folder of the checkpoint after optimizer step `step`: step-00000500."""
    return f"step-{step:08d}"


def temp_sibling(target: Path, token: int | None = None) -> Path:
    """The hidden temporary folder beside `target` where it is assembled (`token`: the writer's id, by
    default its pid, so that two writers never share one)."""
    return target.parent / f".{target.name}.tmp-{os.getpid() if token is None else token}"


def fsync_folder(folder: Path) -> None:
    """Flush every file below `folder` to disk, so that the rename that publishes it publishes complete files."""
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())


def replace_folder(tmp: Path, target: Path) -> None:
    """Move the finished `tmp` folder to `target`, replacing a previous folder there."""
    if not target.exists():
        os.replace(tmp, target)
        return
    # Folders cannot be replaced in one atomic rename: move the old one aside first, then delete it.
    old = target.parent / f".{target.name}.old-{os.getpid()}"
    shutil.rmtree(old, ignore_errors=True)
    os.replace(target, old)
    try:
        os.replace(tmp, target)
    except BaseException:
        os.replace(old, target)  # put the previous folder back
        raise
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_folder(target: Path, token: int | None = None) -> Iterator[Path]:
    """Write a folder atomically: yields a fresh temporary sibling of `target`; when the block ends without
    an error, its files are made durable and it replaces `target`; on any error (Ctrl-C too) it is deleted,
    and a full disk becomes a DiskFullError.

        with atomic_folder(Path("out/model")) as tmp:
            (tmp / "plmkit.json").write_text(...)
    """
    target = Path(target)
    check_folder_path(target, "folder")
    make_folder(target.parent)
    tmp = temp_sibling(target, token)
    try:
        shutil.rmtree(tmp, ignore_errors=True)  # left over by an earlier crash of a writer with this token
        tmp.mkdir()
        yield tmp
        fsync_folder(tmp)
        replace_folder(tmp, target)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise_if_disk_full(e, target, "nothing was written there; free some space and run it again")
        raise


@contextlib.contextmanager
def atomic_file(target: Path) -> Iterator[BinaryIO]:
    """Write one file atomically: yields a binary file on a temporary sibling of `target`, renamed over
    it when the block ends without an error; on any error it is removed (a full disk: DiskFullError)."""
    target = Path(target)
    tmp = temp_sibling(target)
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        raise_if_disk_full(e, target, "nothing was written there; free some space and run it again")
        raise


@contextlib.contextmanager
def output_folder(
    target: str | Path,
    inputs: Iterable[str | Path] = (),
    overwrite: bool = False,
    what: str = "output folder",
) -> Iterator[Path]:
    """`check_output_folder`, then `atomic_folder`: yields the temporary folder to write into."""
    target = Path(target)
    check_output_folder(target, inputs, overwrite, what)
    with atomic_folder(target) as tmp:
        yield tmp


# ---- the output rule -----------------------------------------------------------------------------
def check_output_folder(
    target: str | Path,
    inputs: Iterable[str | Path] = (),
    overwrite: bool = False,
    what: str = "output folder",
) -> None:
    """OutputError unless `target` may become a command's output folder: not one of `inputs`, nor inside or
    above one (even with `overwrite`); not under a regular file; and, unless `overwrite`, not an existing
    checkpoint, model or run folder nor any other non-empty folder. `what` names it in the message (--out)."""
    target = Path(target)
    for source in inputs:
        relation = nesting(target, Path(source))
        if relation is not None:
            harm = {
                "is": "writing there would destroy it",
                "contains": "replacing the folder would delete the input",
                "is inside": "the output would change the input",
            }[relation]
            raise OutputError(
                f"{what} {target} {relation} the input {source}: {harm}; choose another folder "
                "(--overwrite does not apply to inputs)"
            )
    check_folder_path(target, what)
    if not target.exists() or not any(target.iterdir()) or overwrite:
        return
    kind = folder_kind(target)
    raise OutputError(
        f"{what} {target} already exists and is {kind}; choose a new folder, or pass --overwrite to replace it"
    )


def nesting(a: Path, b: Path) -> str | None:
    """How folder `a` sits relative to `b` ("is", "is inside", "contains"), or None when they are apart.
    Compared resolved, so symbolic links and `..` do not hide it."""
    a, b = Path(a).resolve(), Path(b).resolve()
    if a == b:
        return "is"
    if b in a.parents:
        return "is inside"
    if a in b.parents:
        return "contains"
    return None


def folder_kind(folder: Path) -> str:
    """What an existing non-empty folder holds, for messages: "a training checkpoint (training_state.pt)"."""
    names = {p.name for p in folder.iterdir()}
    if "training_state.pt" in names or "trainer_state.json" in names:
        return "a training checkpoint (it holds training_state.pt / trainer_state.json)"
    if names & set(PRECIOUS_FOLDERS) or "recipe.json" in names:
        return "a training run folder (it holds checkpoints/ or recipe.json)"
    found = [name for name in PRECIOUS_FILES if name in names]
    if found:
        return f"a checkpoint or model folder (it holds {found[0]})"
    return f"not empty ({len(names)} entries)"


def check_folder_path(folder: str | Path, what: str = "output folder") -> None:
    """OutputError when `folder` cannot be a folder: it, or a folder above it, is an existing regular file.
    Call it before creating a folder (a run's out_dir, an --out), or use `make_folder`."""
    folder = Path(folder)
    for path in (folder, *folder.parents):
        if path.exists() and not path.is_dir():
            where = "is" if path == folder else f"is under {path}, which is"
            raise OutputError(
                f"{what} {folder} {where} a file, not a folder; choose a folder path (or move the file)"
            )


def make_folder(folder: str | Path, what: str = "output folder") -> Path:
    """Create `folder` and its parents (mkdir -p) with a one-line OutputError / DiskFullError instead of a
    traceback when a parent is a file, permission is denied or the disk is full."""
    folder = Path(folder)
    check_folder_path(folder, what)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except PermissionError as e:
        raise OutputError(f"cannot create {what} {folder}: permission denied ({e.filename})") from e
    except OSError as e:
        raise_if_disk_full(e, folder, "free some space and run it again")
        raise
    return folder


# ---- a full disk ---------------------------------------------------------------------------------
def disk_full_errno(exc: BaseException) -> int | None:
    """ENOSPC or EFBIG when `exc` (or an exception it was raised from) says the disk or the file size limit
    ran out: an OSError, or the message of a library that wraps it (safetensors, tokenizers: "os error 28")."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in DISK_FULL:
            return current.errno
        text = str(current)
        for code in DISK_FULL:
            if f"os error {code})" in text:
                return code
        current = current.__cause__ or current.__context__
    return None


def raise_if_disk_full(exc: BaseException, target: Path, then: str) -> None:
    """Raise a DiskFullError for `exc` when it is a full disk (`then`: what happened and what to do), else
    return. A DiskFullError passes through unchanged (an inner writer already said it)."""
    if isinstance(exc, DiskFullError):
        raise exc
    code = disk_full_errno(exc)
    if code is not None:
        raise DiskFullError(
            f"no space left on device while writing {target} ({os.strerror(code)}, errno {code}); {then}"
        ) from exc


def read_json(path: Path, what: str = "file") -> Any:
    """The parsed JSON of `path`; CheckpointError naming the file when it is missing or corrupt
    (`what` says what the file is, e.g. "plmkit checkpoint header")."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path} does not exist: the {what} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is corrupt (the {what} is not valid JSON: {e})") from e


def write_json(path: Path, data: Any) -> None:
    """`data` as indented UTF-8 JSON (non-ASCII kept as it is) with a final newline."""
    Path(path).write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
