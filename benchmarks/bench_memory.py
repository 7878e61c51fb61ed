"""Training memory with and without gradient checkpointing at sequence 1024; tensor-parallel throughput.

    python benchmarks/bench_memory.py [--models gpt2 bert] [--seq 1024] [--batch 2] [--layers 8]
                                      [--d-model 256] [--heads 4] [--vocab 8192] [--steps 3] [--warmup 1]
                                      [--threads N] [--device cpu|cuda] [--no-tp] [--tp-steps 3]

Models (presets with the sizes above): gpt2 (causal, learned positions, GELU, biases), llama (causal,
rotary, GQA, SwiGLU), bert (masked LM, 15% of positions predicted), bart (encoder-decoder, target as
long as the source). One training step = forward + loss + backward + AdamW step + zero_grad.

Every configuration (model x checkpointing off/on) runs in a fresh Python process, so no allocator
state carries over. It builds the model and AdamW, initialises the optimizer state (one step on zero
gradients), then measures
  rss_delta_mb       peak RSS of the process minus its RSS after building model and optimizer:
                     activations + gradients + temporaries, as the OS sees it (CPU). The peak is the
                     kernel's VmHWM, reset after the build (Linux /proc/self/clear_refs), else
                     resource.getrusage's lifetime peak (`rss_peak_since` says which)
  activation_rss_mb  rss_delta_mb minus the gradients' bytes
  held_after_forward_mb  bytes allocated by the forward and still held when backward starts = the
                     activations autograd keeps (+ logits), exact: plmkit.train.memory's replay of the
                     profiler's allocation records (CPU), torch.cuda.memory_allocated (GPU)
  peak_alloc_mb      the most bytes allocated at once during forward + backward (same accounting;
                     GPU: torch.cuda.max_memory_allocated), gradients included
  ms_per_step        median step time (steps after --warmup)
The summary line gives, per model, checkpointing's reductions (plain / checkpointed) of each memory
figure and its step-time cost (checkpointed / plain); goal: held_after_forward reduction >= 3.

Tensor parallelism (unless --no-tp): the llama model trained on 2 ranks (gloo, one thread each,
apply_tensor_parallel) against one process with one thread and with two threads (the same cores),
same batch; tokens/s ratios. On a CPU the per-sublayer all-reduces go through gloo, so this shows the
overhead of the split, not a GPU speedup.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchkit.memory import EXACT_MALLOC, current_rss, peak_rss, reset_peak  # noqa: E402

PRESETS = {"gpt2": "gpt2-tiny", "llama": "llama-tiny", "bert": "bert-tiny", "bart": "bart-base"}
MB = 2**20


# ---- one configuration ---------------------------------------------------------------------------
def build(args: argparse.Namespace, kind: str, device: torch.device):
    from plmkit.model import build_model

    torch.manual_seed(0)
    sizes = dict(
        vocab_size=args.vocab,
        d_model=args.d_model,
        n_layer=args.layers,
        n_head=args.heads,
        d_ff=4 * args.d_model,
        max_positions=args.seq,
    )
    if kind == "llama":
        sizes["n_kv_head"] = max(1, args.heads // 2)
    model = build_model(PRESETS[kind], **sizes).to(device).train()
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, args.vocab, (args.batch, args.seq), generator=g)
    if kind == "bert":
        masked = torch.rand(ids.shape, generator=g) < 0.15
        batch = {"input_ids": ids.masked_fill(masked, 4), "labels": ids.masked_fill(~masked, -100)}
    elif kind == "bart":
        batch = {"input_ids": ids, "labels": ids.flip(1)}
    else:
        batch = {"input_ids": ids, "labels": ids}
    return model, {k: v.to(device) for k, v in batch.items()}


def adamw(model: torch.nn.Module, fused: bool = True) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=1e-4, fused=fused)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def train_steps(model, optimizer, batch, steps: int, warmup: int, device: torch.device) -> list[float]:
    """Seconds of each step after the warm-up."""
    times = []
    for i in range(warmup + steps):
        sync(device)
        start = time.perf_counter()
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


def exact_memory(model, batch, device: torch.device) -> tuple[int, int]:
    """(bytes held after the forward, peak bytes over forward + backward), allocated by this step."""
    model.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        loss = model(**batch).loss
        held = torch.cuda.memory_allocated() - base
        loss.backward()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        from plmkit.train.memory import track_cpu_allocations

        with track_cpu_allocations() as memory:
            loss = model(**batch).loss
            memory.mark("forward")
            loss.backward()
        held, peak = memory.at("forward"), memory.peak_bytes
    model.zero_grad(set_to_none=True)
    return held, peak


def run_case(args: argparse.Namespace, kind: str, checkpointing: bool) -> dict:
    device = torch.device(args.device)
    model, batch = build(args, kind, device)
    model.set_gradient_checkpointing(checkpointing)
    optimizer = adamw(model)
    for p in model.parameters():  # AdamW allocates its moments at the first step: do that now
        p.grad = torch.zeros_like(p)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    grad_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    baseline = current_rss()
    peak_reset = reset_peak()
    times = train_steps(model, optimizer, batch, args.steps, args.warmup, device)
    rss_delta = peak_rss() - baseline  # read before profiling, whose records take memory too
    held, peak = exact_memory(model, batch, device)
    result = {
        "bench": "memory",
        "model": kind,
        "checkpointing": checkpointing,
        "device": device.type,
        "seq": args.seq,
        "batch": args.batch,
        "parameters": model.num_parameters(),
        "grad_mb": round(grad_bytes / MB, 1),
        "held_after_forward_mb": round(held / MB, 1),
        "peak_alloc_mb": round(peak / MB, 1),
        "ms_per_step": round(1000 * statistics.median(times), 1),
        "ms_min": round(1000 * min(times), 1),
        "ms_steps": [round(1000 * t) for t in times],
    }
    if device.type == "cpu":
        result["rss_peak_since"] = "model built" if peak_reset else "process start"
        result["rss_baseline_mb"] = round(baseline / MB, 1)
        result["rss_delta_mb"] = round(rss_delta / MB, 1)
        result["activation_rss_mb"] = round((rss_delta - grad_bytes) / MB, 1)
    return result


# ---- tensor parallel throughput --------------------------------------------------------------------
def tp_rank(rank: int, args: argparse.Namespace, rendezvous: str, out: str) -> None:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    from plmkit.train.distributed.tensor_parallel import apply_tensor_parallel

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=2)
    model, batch = build(args, "llama", torch.device("cpu"))
    apply_tensor_parallel(model, init_device_mesh("cpu", (2,), mesh_dim_names=("tp",)))
    optimizer = adamw(model, fused=False)  # DTensor parameters: the plain for-each AdamW
    times = train_steps(model, optimizer, batch, args.tp_steps, args.warmup, torch.device("cpu"))
    if rank == 0:
        Path(out).write_text(json.dumps(step_stats(times)))
    dist.barrier()
    dist.destroy_process_group()


def run_tp(args: argparse.Namespace) -> dict:
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        out = f"{tmp}/result.json"
        mp.start_processes(tp_rank, args=(args, f"{tmp}/rendezvous", out), nprocs=2, start_method="spawn")
        return json.loads(Path(out).read_text())


def run_single(args: argparse.Namespace, threads: int) -> dict:
    torch.set_num_threads(threads)
    model, batch = build(args, "llama", torch.device("cpu"))
    times = train_steps(
        model, adamw(model, fused=False), batch, args.tp_steps, args.warmup, torch.device("cpu")
    )
    return step_stats(times)


def step_stats(times: list[float]) -> dict:
    return {"ms_per_step": 1000 * statistics.median(times), "ms_min": 1000 * min(times)}


# ---- driver ------------------------------------------------------------------------------------------
# glibc's adaptive mmap threshold keeps freed activations in the heap; benchkit.memory.EXACT_MALLOC
# returns every block >= 64 KiB to the OS on free, so RSS follows what is allocated.


def in_fresh_process(args: argparse.Namespace, job: dict) -> dict:
    command = [sys.executable, __file__, *sys.argv[1:], "--job", json.dumps(job)]
    env = os.environ if args.default_malloc else {**os.environ, **EXACT_MALLOC}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        return {"bench": "memory", **job, "error": done.stderr.strip().splitlines()[-1:] or ["failed"]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def summarize(results: list[dict], tp: dict | None) -> dict:
    summary: dict = {"bench": "memory_summary"}
    by_key = {(r["model"], r["checkpointing"]): r for r in results if "error" not in r}
    for kind in sorted({r["model"] for r in results}):
        plain, ckpt = by_key.get((kind, False)), by_key.get((kind, True))
        if plain is None or ckpt is None:
            continue
        ratios = {}
        for field in ("held_after_forward_mb", "peak_alloc_mb", "rss_delta_mb", "activation_rss_mb"):
            if field in plain and ckpt.get(field, 0) > 0:
                ratios[field.removesuffix("_mb") + "_reduction"] = round(plain[field] / ckpt[field], 2)
        ratios["step_time_ratio"] = round(ckpt["ms_per_step"] / plain["ms_per_step"], 2)
        ratios["step_time_ratio_min"] = round(ckpt["ms_min"] / plain["ms_min"], 2)  # least disturbed steps
        ratios["goal_3x_met"] = ratios.get("held_after_forward_reduction", 0) >= 3
        summary[kind] = ratios
    if tp is not None:
        summary["tensor_parallel"] = tp
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["gpt2", "bert"], choices=list(PRESETS))
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per configuration")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-tp", action="store_true", help="skip the tensor-parallel throughput comparison")
    parser.add_argument("--tp-steps", type=int, default=3)
    parser.add_argument(
        "--default-malloc",
        action="store_true",
        help="keep glibc's adaptive mmap threshold (RSS then includes heap fragmentation)",
    )
    parser.add_argument("--job", help=argparse.SUPPRESS)  # internal: one configuration, in this process
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    if args.job:
        job = json.loads(args.job)
        if job["kind"] == "case":
            result = run_case(args, job["model"], job["checkpointing"])
        elif job["kind"] == "tp":
            result = run_tp(args)
        else:
            result = run_single(args, job["threads"])
        print(json.dumps(result), flush=True)
        return

    setup = {
        "bench": "memory_setup",
        "torch": torch.__version__,
        "device": args.device,
        "threads": args.threads,
        "malloc": "glibc default" if args.default_malloc else EXACT_MALLOC,
        "config": {
            "seq": args.seq,
            "batch": args.batch,
            "layers": args.layers,
            "d_model": args.d_model,
            "heads": args.heads,
            "d_ff": 4 * args.d_model,
            "vocab": args.vocab,
        },
    }
    print(json.dumps(setup), flush=True)
    results = []
    for kind in args.models:
        for checkpointing in (False, True):
            result = in_fresh_process(args, {"kind": "case", "model": kind, "checkpointing": checkpointing})
            results.append(result)
            print(json.dumps(result), flush=True)
    tp = None
    if not args.no_tp and args.device == "cpu":
        two = in_fresh_process(args, {"kind": "tp"})
        one = in_fresh_process(args, {"kind": "single", "threads": 1})
        one_two_threads = in_fresh_process(args, {"kind": "single", "threads": 2})
        runs = {"tp2": two, "1proc_1thread": one, "1proc_2threads": one_two_threads}
        errors = {k: r["error"] for k, r in runs.items() if "error" in r}
        tp = {"model": "llama", "errors": errors} if errors else {"model": "llama"}
        if not errors:
            for name, r in runs.items():
                tp[f"ms_per_step_{name}"], tp[f"ms_min_{name}"] = (
                    round(r["ms_per_step"], 1),
                    round(r["ms_min"], 1),
                )
            for base in ("1proc_1thread", "1proc_2threads"):  # > 1: the two ranks train faster
                tp[f"tp2_speedup_vs_{base.removeprefix('1proc_')}"] = round(
                    runs[base]["ms_per_step"] / two["ms_per_step"], 2
                )
                tp[f"tp2_speedup_vs_{base.removeprefix('1proc_')}_min"] = round(
                    runs[base]["ms_min"] / two["ms_min"], 2
                )
    print(json.dumps(summarize(results, tp)), flush=True)


if __name__ == "__main__":
    main()
