"""`tree_hashes(folder, ...)`: the sha256 of every file below some folders, to show that a command
changed nothing it must not (tests of --out, full disks)."""

from __future__ import annotations

import hashlib
from pathlib import Path


def tree_hashes(*folders: Path) -> dict[str, str]:
    """{path: sha256} of every file below `folders` (paths as given, so two folders never collide)."""
    hashes = {}
    for folder in folders:
        for path in sorted(Path(folder).rglob("*")):
            if path.is_file():
                hashes[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    assert hashes, f"nothing to hash below {folders}"  # a hash of nothing would prove nothing
    return hashes
