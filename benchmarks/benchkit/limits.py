"""The machine and its limits, measured in the same run (BENCHMARKING.md rules 4 and 5).

gemm_peak      best GFLOP/s of an n^3 torch.matmul per dtype over a few windows (the training limit)
read_bandwidth best GB/s of a sum over an array far larger than the caches (the decoding limit)
matvec_rates   GB/s of batch-1 matrix-vector products whose weights come from DRAM, for both layouts:
               (out, in) through F.linear and (in, out) through x @ W
"""

from __future__ import annotations

import datetime
import os
import platform
import re
import time
from collections.abc import Sequence

import torch
import torch.nn.functional as F

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def cpu_info(text: str | None = None) -> dict:
    """CPU model and the flags that decide the fast paths, from /proc/cpuinfo."""
    if text is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8") as f:
                text = f.read()
        except OSError:
            text = ""
    model = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
    flags_line = re.search(r"^flags\s*:\s*(.+)$", text, re.M)
    flags = set(flags_line.group(1).split()) if flags_line else set()
    return {
        "model": model.group(1).strip() if model else platform.processor() or platform.machine(),
        "avx512": "avx512f" in flags,
        "avx512_bf16": "avx512_bf16" in flags,
        "amx": "amx_tile" in flags,
        "amx_bf16": "amx_bf16" in flags,
    }


def slug(cpu_model: str) -> str:
    """A file-name form of the CPU model: "AMD EPYC 7B13 64-Core Processor" -> "amd-epyc-7b13-64-core"."""
    text = re.sub(r"\((r|tm)\)|processor|cpu @.*$", "", cpu_model.lower())
    return re.sub(r"[^a-z0-9]+", "-", text).strip("-") or "cpu"


def machine() -> dict:
    import transformers

    try:
        import peft

        peft_version = peft.__version__
    except ImportError:
        peft_version = None
    info = {
        "cpu": cpu_info(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft_version,
        "python": platform.python_version(),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name(0)
    return info


def _best_rate(work, amount: float, windows: int, window_s: float) -> float:
    """amount / seconds of one work() call, best window; a window repeats work() for ~window_s."""
    work()
    best = 0.0
    for _ in range(windows):
        calls, start = 0, time.perf_counter()
        while True:
            work()
            calls += 1
            elapsed = time.perf_counter() - start
            if elapsed >= window_s:
                break
        best = max(best, amount * calls / elapsed)
    return best


def gemm_peak(
    dtype: torch.dtype, n: int, windows: int = 3, window_s: float = 2.0, device: str = "cpu"
) -> float:
    """GFLOP/s of an n x n x n matmul, best of `windows` windows of ~window_s."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)

    def work():
        torch.matmul(a, b)
        if device != "cpu":
            torch.cuda.synchronize()

    return _best_rate(work, 2 * n**3 / 1e9, windows, window_s)


def read_bandwidth(megabytes: int, windows: int = 3, window_s: float = 1.0) -> float:
    """GB/s of torch.sum over an fp32 array of `megabytes` (choose it far above the last-level cache)."""
    x = torch.ones(megabytes * 2**20 // 4)
    return _best_rate(lambda: x.sum(), x.numel() * 4 / 1e9, windows, window_s)


def matvec_rates(
    d: int, count: int, dtypes=("fp32", "bf16"), windows: int = 3, window_s: float = 0.5
) -> dict:
    """GB/s of y = x W for one token, cycling `count` distinct (d, 4d) weights (count x size >> cache),
    per dtype and layout. The best layout per dtype is what a decode engine should store."""
    rates: dict = {}
    for name in dtypes:
        dtype = DTYPES[name]
        x = torch.randn(1, d).to(dtype)
        out_in = [torch.randn(4 * d, d).to(dtype) for _ in range(count)]  # nn.Linear's layout
        in_out = [w.t().contiguous() for w in out_in]
        amount = count * out_in[0].numel() * out_in[0].element_size() / 1e9

        def linear(ws=out_in, x=x):
            for w in ws:
                F.linear(x, w)

        def matmul(ws=in_out, x=x):
            for w in ws:
                x @ w

        rates[name] = {
            "out_in_F.linear": _best_rate(linear, amount, windows, window_s),
            "in_out_x@W": _best_rate(matmul, amount, windows, window_s),
        }
        del out_in, in_out
    return rates


def measure(quick: bool, log=print, dtypes: Sequence[str] = tuple(DTYPES)) -> dict:
    """Every limit (GEMM peaks of `dtypes`), sized for --quick (seconds) or the full run (tens of seconds)."""
    n = 1024 if quick else 4096
    windows, window_s = (2, 0.3) if quick else (3, 2.0)
    limits: dict = {"gemm_n": n, "gemm_gflops": {}}
    for name in dtypes:
        limits["gemm_gflops"][name] = gemm_peak(DTYPES[name], n, windows, window_s)
        log(f"  GEMM {n}^3 {name}: {limits['gemm_gflops'][name]:.1f} GFLOP/s")
    mb = 512 if quick else 2048
    limits["bandwidth_array_mb"] = mb
    limits["read_gb_s"] = read_bandwidth(mb, windows, 0.5 if quick else 1.0)
    log(f"  streaming read ({mb} MB): {limits['read_gb_s']:.1f} GB/s")
    d, count = (768, 16) if quick else (768, 48)  # 9.4 MB per fp32 matrix: 150 / 450 MB in all
    limits["matvec_shape"] = {"d": d, "matrices": count, "matrix": [4 * d, d]}
    limits["matvec_gb_s"] = matvec_rates(d, count, windows=windows, window_s=0.3 if quick else 0.5)
    for name, r in limits["matvec_gb_s"].items():
        log(f"  matrix-vector {name}: " + ", ".join(f"{k} {v:.1f} GB/s" for k, v in r.items()))
    return limits


def measure_tiny(log=print, dtypes: Sequence[str] = tuple(DTYPES)) -> dict:
    """The same fields in well under a second (tests of the harness; not a limit of anything)."""
    limits: dict = {"gemm_n": 128, "gemm_gflops": {}}
    for name in dtypes:
        limits["gemm_gflops"][name] = gemm_peak(DTYPES[name], 128, 1, 0.02)
    limits["bandwidth_array_mb"] = 16
    limits["read_gb_s"] = read_bandwidth(16, 1, 0.02)
    limits["matvec_shape"] = {"d": 64, "matrices": 2, "matrix": [256, 64]}
    limits["matvec_gb_s"] = matvec_rates(64, 2, windows=1, window_s=0.02)
    log("  tiny limits (harness test only)")
    return limits
