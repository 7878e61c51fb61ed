"""`plm RECIPE_NAME RECIPE.yaml --nproc N`: start N training processes on this machine under torchrun.

`launch_recipe` decides: no --nproc or --nproc 1 runs the job in this process; N > 1 checks the recipe
against N processes (before any starts) and launches them. It is torchrun itself, run in this process:
`python -m torch.distributed.run --standalone --nproc-per-node N -m plmkit pretrain RECIPE ...` (the
workers are ordinary `python -m plmkit` processes, exactly what a user's own `torchrun ... -m plmkit
pretrain ...` starts), but the launcher keeps torchrun's failure report to one line: a worker's user
error reaches it through torchrun's error file (TORCHELASTIC_ERROR_FILE), the launcher prints it once
as `error: ...` and exits 2.

Workers: rank 0 prints and logs; a worker's PlmkitError goes to the error file (torchrun's summary shows
it), and to stderr from rank 0 only, unless this launcher started it (then the launcher prints it).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from plmkit.errors import ConfigError, DiskFullError
from plmkit.files import atomic_file

LAUNCHER_VARIABLE = "PLMKIT_LAUNCHER"  # set in workers started by `plm --nproc`: the launcher reports errors
USER_ERROR_CODE = 2
INTERRUPTED_CODE = 130  # `plm` after Ctrl-C


def launch_recipe(nproc: str | None, config: Any, argv: Sequence[str]) -> int | None:
    """Start `python -m plmkit ARGV` in `nproc` processes (the value of --nproc) and return their exit code,
    or None when the job runs in this process (no --nproc, or 1). `config` is the job's recipe config
    (its train.device and distributed sections), checked against the processes before any starts."""
    if nproc is None:
        return None
    n = parse_nproc(nproc)
    if n == 1:
        return None
    from plmkit.train.distributed.build import strategy_name
    from plmkit.train.distributed.world import World

    gpus = check_nproc(n, config.train.device)
    strategy_name(config.distributed, World(0, n, 0, launched=True))  # e.g. strategy=single with --nproc 2
    warn_oversubscribed(n, gpus)  # after the errors: a refused command prints only its error line
    return launch(n, argv)


def parse_nproc(text: str) -> int:
    """The value of --nproc: a whole number of processes, at least 1."""
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise ConfigError(
            f"--nproc {text!r}: give the number of processes to start, a whole number >= 1 (e.g. --nproc 2)"
        )
    return n


def check_nproc(nproc: int, device: str) -> int:
    """ConfigError when `nproc` processes cannot start here; returns the GPUs they will use (0 on CPU)."""
    if os.environ.get("TORCHELASTIC_RUN_ID") or os.environ.get("LOCAL_RANK"):
        raise ConfigError(
            "--nproc inside a process that torchrun started: drop --nproc (torchrun sets the processes)"
        )
    gpus = 0
    if device != "cpu":
        import torch

        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if gpus and nproc > gpus:
            raise ConfigError(
                f"--nproc {nproc}, but this machine has {gpus} GPU(s) (one per process); "
                f"use --nproc {gpus} or fewer, or train.device=cpu"
            )
    return gpus


def warn_oversubscribed(nproc: int, gpus: int) -> None:
    cores = cpu_cores()
    if not gpus and nproc > cores:  # CPU processes: more than the cores only take turns
        from plmkit.train.logging import warn

        warn(
            f"--nproc {nproc} is more than the {cores} CPU core(s) this process may use: the training "
            f"processes will share them and run slower than --nproc {cores} would"
        )


def cpu_cores() -> int:
    """The CPU cores this process may run on (its affinity mask where the platform has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS, Windows
        return os.cpu_count() or 1


def report_worker_error(message: str) -> None:
    """In a worker: hand a user error to torchrun (its error file), and print it from rank 0 unless the
    `plm --nproc` launcher will print it."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if path:  # torchrun's format (torch.distributed.elastic.multiprocessing.errors), without a traceback
        data = {
            "message": {
                "message": message,
                "extraInfo": {"py_callstack": f"error: {message}", "timestamp": str(int(time.time()))},
            }
        }
        # Atomically: when one worker fails, torchrun terminates the others and reads their error files
        # too; a worker stopped halfway through a plain write would leave a half-written (unparsable) file.
        with contextlib.suppress(OSError, DiskFullError), atomic_file(Path(path)) as f:
            f.write(json.dumps(data).encode("utf-8"))
    if os.environ.get("RANK", "0") == "0" and not os.environ.get(LAUNCHER_VARIABLE):
        print(f"error: {message}", file=sys.stderr)


def is_worker() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def is_rank_zero() -> bool:
    """The process that reports a job's results: rank 0 under torchrun, or the only process."""
    return os.environ.get("RANK", "0") == "0"


@contextlib.contextmanager
def _signal_handlers_restored() -> Iterator[None]:
    """torchrun's agent installs its own SIGINT / SIGTERM / ... handlers and leaves them: put the caller's
    back (a launch from Python, not only from the CLI, must not change how the process takes Ctrl-C)."""
    names = ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT")
    signals = [getattr(signal, n) for n in names if hasattr(signal, n)]
    saved = {s: signal.getsignal(s) for s in signals}
    try:
        yield
    finally:
        for s, handler in saved.items():
            if handler is not None:  # None: set from C, not restorable from Python
                signal.signal(s, handler)


def launch(nproc: int, argv: Sequence[str]) -> int:
    """Run `python -m plmkit ARGV` in `nproc` processes under torchrun; returns their exit code."""
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    # torchrun's own log folder (the workers' error files) in a temporary folder removed afterwards: by
    # default it makes /tmp/torchelastic_* and leaves it behind, one per launch
    logs = tempfile.TemporaryDirectory(prefix="plmkit-torchrun-", ignore_cleanup_errors=True)
    args = torchrun.parse_args(
        ["--standalone", f"--nproc-per-node={nproc}", "--log-dir", logs.name, "--module", "plmkit", *argv]
    )
    threads = str(max(1, (os.cpu_count() or 1) // nproc))  # torchrun's default is 1 thread per process
    try:
        with (
            logs,
            _environment(
                {LAUNCHER_VARIABLE: "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", threads)}
            ),
            _quiet_agent(),
            _signal_handlers_restored(),
        ):
            torchrun.run(args)
    except SignalException as signalled:  # Ctrl-C reaches torchrun's agent as a signal
        if signalled.sigval == signal.SIGINT:
            raise KeyboardInterrupt from None
        raise
    except ChildFailedError as failed:
        rank, failure = failed.get_first_failure()
        if failure.exitcode in (INTERRUPTED_CODE, -signal.SIGINT):  # a worker saw the Ctrl-C first
            raise KeyboardInterrupt from None
        for user_error in failed.failures.values():  # not only the first: the others were terminated
            message = user_error.message.get("message", "") if isinstance(user_error.message, dict) else ""
            if user_error.exitcode == USER_ERROR_CODE and message:  # a PlmkitError (report_worker_error)
                print(f"error: {message}", file=sys.stderr)
                return USER_ERROR_CODE
        code = failure.exitcode
        print(
            f"error: training process {rank} of {nproc} failed with exit code {code} (its output is above)",
            file=sys.stderr,
        )
        return code if code > 0 else 1
    return 0


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """Variables the workers inherit, restored afterwards (the launcher may run inside a test process)."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def _quiet_agent() -> Iterator[None]:
    """torchrun's agent logs every worker failure with a traceback of its own; the launcher reports one line."""
    agent = logging.getLogger("torch.distributed.elastic")
    level = agent.level
    agent.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        agent.setLevel(level)
