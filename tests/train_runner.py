"""`python tests/train_runner.py ARGS...` runs `plm ARGS...` with test-only fault injection.

PLMKIT_TEST_DIE_IN_STATE_SAVE=N: the N-th training-state file a checkpoint writes (torch.save in
plmkit.train.checkpoint) gets half its bytes, then the process SIGKILLs itself, as if the machine
died in the middle of writing a checkpoint.

PLMKIT_TEST_FILE_LIMIT=BYTES[:N]: a full disk. Files may grow to BYTES at most (RLIMIT_FSIZE, with
SIGXFSZ ignored, so a write past it fails with EFBIG as on a full disk); with N, the limit starts when
the N-th training checkpoint begins (the ones before are written whole), else at once.
"""

from __future__ import annotations

import os
import resource
import signal
import sys


def install_fault(die_at: int) -> None:
    import torch

    import plmkit.train.checkpoint as checkpoint

    real_save = torch.save
    calls = {"n": 0}

    def dying_save(obj, f, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == die_at:
            real_save(obj, f, *args, **kwargs)
            path = f if isinstance(f, (str, os.PathLike)) else f.name
            if not isinstance(f, (str, os.PathLike)):
                f.flush()
            size = os.path.getsize(path)
            with open(path, "r+b") as out:  # a torn write: the first half made it to disk
                out.truncate(size // 2)
                out.flush()
                os.fsync(out.fileno())
            os.kill(os.getpid(), signal.SIGKILL)
        return real_save(obj, f, *args, **kwargs)

    checkpoint.torch.save = dying_save  # the module's `torch` is the torch module: patched process-wide


def limit_file_size(limit: int) -> None:
    """Writes past `limit` bytes fail with OSError EFBIG (instead of the SIGXFSZ that kills the process)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))


def install_file_limit(limit: int, at_checkpoint: int) -> None:
    """The file size limit from the start of the `at_checkpoint`-th training checkpoint on."""
    import plmkit.train.checkpoint as checkpoint

    real_save = checkpoint.save_checkpoint
    calls = {"n": 0}

    def limited_save(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == at_checkpoint:
            limit_file_size(limit)
        return real_save(*args, **kwargs)

    checkpoint.save_checkpoint = limited_save
    import plmkit.train.distributed.base as base  # imported the name itself

    base.save_checkpoint = limited_save


if __name__ == "__main__":
    die_at = int(os.environ.get("PLMKIT_TEST_DIE_IN_STATE_SAVE", "0"))
    if die_at:
        install_fault(die_at)
    file_limit = os.environ.get("PLMKIT_TEST_FILE_LIMIT")
    if file_limit:
        limit, _, at = file_limit.partition(":")
        if at:
            install_file_limit(int(limit), int(at))
        else:
            limit_file_size(int(limit))
    from plmkit.cli import main

    sys.exit(main(sys.argv[1:]))
