"""Memory rows, each measurement in a fresh Python process so no allocator state carries over.

rss_row:     peak RSS of one training step (gradient checkpointing on, fp32, fused AdamW) of the
             same weights in plmkit and in transformers: the process's lifetime peak (VmHWM, loading
             included; ru_maxrss is kept in the JSON, but Linux carries the parent's peak into it
             across fork + exec) and the peak during the step alone (VmHWM reset before it). The
             step-1 losses must agree within 1e-5.
scaling:     plmkit's step time and peak-RSS growth of a causal LM against sequence length and width,
             one process, points from small to large (the PNG in report.py).
Both run with glibc's mmap threshold fixed at 64 KiB, so freed activations go back to the OS and RSS
follows what is allocated, not heap fragmentation (the same for both sides).
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchkit import contention, rows
from benchkit import models as M

EXACT_MALLOC = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "65536"}
MB = 2**20
RUN_PY = Path(__file__).resolve().parents[1] / "run.py"


def current_rss() -> int:
    """Resident bytes now (Linux; 0 elsewhere)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def reset_peak() -> bool:
    """Restart the kernel's peak-RSS counter (VmHWM) at the current RSS (Linux)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss() -> int:
    """Peak resident bytes of this process image since reset_peak (VmHWM), else ru_maxrss."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux


def in_subprocess(job: dict, timeout: float = 900) -> dict:
    """Run run.py --job JOB in a fresh interpreter; its last stdout line is the JSON result."""
    env = {**os.environ, **EXACT_MALLOC}
    try:
        done = subprocess.run(
            [sys.executable, str(RUN_PY), "--job", json.dumps(job)],
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---- jobs (run inside the subprocess) ------------------------------------------------------------------
def rss_job(job: dict) -> dict:
    from benchkit.train import Step, make_batch

    folder = Path(job["folder"])
    if job["side"] == "plmkit":
        model = M.load_plmkit(folder)
        model.set_gradient_checkpointing(True)
    else:
        model = M.load_reference("gpt2", folder)
        model.gradient_checkpointing_enable()
        model.config.use_cache = False
    step = Step(model, "fp32", make_batch("gpt2", job["vocab"], job["batch"], job["seq"], "cpu"), "cpu")
    before = current_rss()
    loading_peak = peak_rss()  # VmHWM of this process image so far: loading the model
    reset = reset_peak()
    start = time.perf_counter()
    loss = step()
    seconds = time.perf_counter() - start
    step_peak = peak_rss()
    return {
        # ru_maxrss keeps the parent's size across fork + exec; VmHWM belongs to this image alone
        "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_mb": max(loading_peak, step_peak) / MB,
        "step_peak_mb": step_peak / MB if reset else None,
        "rss_before_step_mb": before / MB,
        "step1_loss": loss,
        "step_s": seconds,
    }


def scaling_job(job: dict) -> dict:
    from benchkit.train import Step, make_batch
    from plmkit.model import ModelConfig, build_model

    points = []
    for seq, width in job["points"]:
        torch.manual_seed(0)
        config = ModelConfig(
            family="causal",
            vocab_size=job["vocab"],
            d_model=width,
            n_layer=job["layers"],
            n_head=max(1, width // 64),
            d_ff=4 * width,
            max_positions=seq,
        )
        step = Step(build_model(config), "fp32", make_batch("gpt2", job["vocab"], 1, seq, "cpu"), "cpu")
        for _ in range(2):  # warm-up: AdamW's moments, the allocator, the thread pool
            step()
        base = current_rss()
        reset_peak()
        before = contention.sample()
        times: list[float] = []
        while len(times) < job["steps"] or sum(times) < 0.5:  # >= 0.5 s: enough ticks for the shares
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
        after = contention.sample()
        points.append(
            {
                "seq": seq,
                "width": width,
                "step_ms": 1000 * statistics.median(times),
                "peak_growth_mb": (peak_rss() - base) / MB,
                **contention.shares(before, after, contention.cores()),
            }
        )
        del step
    return {"points": points}


# ---- rows (run in the parent) --------------------------------------------------------------------------
def rss_row(shape: M.Shape, seq: int, batch: int, log) -> dict:
    name = f"peak RSS, checkpointed step {shape.label()} seq {seq} b{batch}"
    log(f"  {name}")
    with tempfile.TemporaryDirectory() as tmp:
        M.save_reference("gpt2", shape, Path(tmp))
        job = {"kind": "rss", "folder": tmp, "vocab": shape.vocab, "seq": seq, "batch": batch}
        result = {side: in_subprocess({**job, "side": side}) for side in ("plmkit", "transformers")}
    errors = {side: r["error"] for side, r in result.items() if "error" in r}
    if errors:
        return rows.not_timed("memory", name, "failed", "; ".join(f"{k}: {v}" for k, v in errors.items()))
    ours, theirs = result["plmkit"], result["transformers"]
    diff = abs(ours["step1_loss"] - theirs["step1_loss"])
    r = rows.row(
        "memory",
        name,
        plmkit=ours["peak_mb"],
        reference=theirs["peak_mb"],
        reference_name="transformers",
        unit="MB peak RSS",
        ratio={"median": theirs["peak_mb"] / ours["peak_mb"], "quiet_rounds": None},
        step_peak_mb={"plmkit": ours["step_peak_mb"], "transformers": theirs["step_peak_mb"]},
        check={"step1_loss_plmkit": ours["step1_loss"], "step1_loss_reference": theirs["step1_loss"]},
        detail=result,
    )
    if diff > 1e-5:
        r.update(status="failed", reason=f"step-1 losses differ by {diff:.2e} > 1e-05")
    return rows.goal(r, "peak RSS <= transformers'", ours["peak_mb"] <= theirs["peak_mb"])


def scaling(quick: bool, log) -> dict:
    if quick:
        seqs, widths, layers, width_seq = [128, 256, 512], [128, 256], 2, 128
    else:
        seqs, widths, layers, width_seq = [128, 256, 512, 1024, 2048], [128, 256, 512, 768], 4, 512
    points = [(s, 256) for s in seqs] + [
        (width_seq, w) for w in widths if (width_seq, w) not in [(s, 256) for s in seqs]
    ]
    log(f"  scaling: {len(points)} points (seq x width) in one fresh process")
    job = {"kind": "scaling", "points": points, "vocab": 8192, "layers": layers, "steps": 2 if quick else 3}
    result = in_subprocess(job)
    result.update(layers=layers, vocab=8192, width_for_seq=256, seq_for_width=width_seq, batch=1)
    return result
