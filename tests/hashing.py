"""`folder_hashes`: every file under a folder by its SHA-256, to show that a refused or failed command
changed nothing (compare before and after)."""

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
