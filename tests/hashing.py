"""The sha256 of every file below folders, to show that a refused or failed command changed nothing it
must not (run folders, --out, full disks): compare before and after."""

from __future__ import annotations

import hashlib
from pathlib import Path


def folder_hashes(folder: Path) -> dict[str, str]:
    """{relative path: sha256 of its bytes} for every file below `folder` (empty if it does not exist)."""
    if not folder.exists():
        return {}
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def tree_hashes(*folders: Path) -> dict[str, str]:
    """{path: sha256} of every file below `folders` (paths as given, so two folders never collide); at
    least one file, since a hash of nothing would prove nothing."""
    hashes = {str(Path(f) / rel): digest for f in folders for rel, digest in folder_hashes(Path(f)).items()}
    assert hashes, f"nothing to hash below {folders}"
    return hashes
