"""Files: atomic folder writes, JSON reading with a named error, and the names of step folders.

Every folder plmkit writes (a checkpoint, a converted model, a training checkpoint) is assembled under a
hidden temporary sibling and renamed into place only when complete, so a crash or a full disk never leaves
a half-written folder and never destroys the previous one.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from plmkit.errors import CheckpointError


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
    an error, its files are made durable and it replaces `target`; on any error it is deleted.

        with atomic_folder(Path("out/model")) as tmp:
            (tmp / "plmkit.json").write_text(...)
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(target, token)
    shutil.rmtree(tmp, ignore_errors=True)  # left over by an earlier crash of a writer with this token
    try:
        tmp.mkdir()
        yield tmp
        fsync_folder(tmp)
        replace_folder(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


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
