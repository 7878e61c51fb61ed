"""`python tests/train_runner.py ARGS...` runs `plm ARGS...` with test-only fault injection.

PLMKIT_TEST_DIE_IN_STATE_SAVE=N: the N-th training-state file a checkpoint writes (torch.save in
plmkit.train.checkpoint) gets half its bytes, then the process SIGKILLs itself, as if the machine
died in the middle of writing a checkpoint.
"""

from __future__ import annotations

import os
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
            size = os.path.getsize(f)
            with open(f, "r+b") as out:  # a torn write: the first half made it to disk
                out.truncate(size // 2)
                out.flush()
                os.fsync(out.fileno())
            os.kill(os.getpid(), signal.SIGKILL)
        return real_save(obj, f, *args, **kwargs)

    checkpoint.torch.save = dying_save  # the module's `torch` is the torch module: patched process-wide


if __name__ == "__main__":
    die_at = int(os.environ.get("PLMKIT_TEST_DIE_IN_STATE_SAVE", "0"))
    if die_at:
        install_fault(die_at)
    from plmkit.cli import main

    sys.exit(main(sys.argv[1:]))
