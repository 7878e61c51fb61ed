"""Full fine-tuning vs LoRA vs QLoRA (LoRA on an int8 / NF4 base) on the same model: trainable parameters,
optimizer state, peak memory, step time.

    python benchmarks/bench_peft.py [--preset gpt2-small] [--r 8] [--target attn.qkv] [--batch 4]
                                    [--seq 128] [--steps 5] [--warmup 2] [--threads N] [--device cpu]
                                    [--configs full lora qlora-int8 qlora-nf4 full-adamw8bit]

Every configuration starts from the same random weights (the model is built with a fixed seed) and runs
in a fresh subprocess, so that its peak memory is its own. One training step = forward + causal LM loss +
backward + AdamW step (lr 1e-4, fused where the device supports it) + zero_grad, on the same random-token
batches. full: every parameter; lora: plmkit.peft.apply(model, "lora", r=R, target=TARGET), only the LoRA
factors train; qlora-int8 / qlora-nf4: the same LoRA on plmkit.quant.quantize(model, "int8" | "nf4");
full-adamw8bit: full fine-tuning with bitsandbytes' 8-bit AdamW (optim.name=adamw8bit).

Optimizer state = bytes of every tensor in optimizer.state after the first step. Peak memory = the
process's peak resident set (VmHWM) during the training steps (reset after setup where Linux allows;
otherwise the lifetime peak), and its growth over the resident set after setup; on CUDA also the peak
allocated memory. Warm-up steps are excluded and the median step time is reported.

Prints one JSON line per configuration and a summary line with the ratios to full fine-tuning
(goal: optimizer_state_reduction >= 0.90 for LoRA r=8).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchkit.memory import current_rss, peak_rss, reset_peak  # noqa: E402

CONFIGS = ("full", "lora", "qlora-int8", "qlora-nf4", "full-adamw8bit")


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    def size(value) -> int:
        if torch.is_tensor(value):
            return value.numel() * value.element_size()
        return sum(size(v) for v in value.values()) if isinstance(value, dict) else 0  # bitsandbytes nests

    return sum(size(state) for state in optimizer.state.values())


def make_optimizer(model: torch.nn.Module, eight_bit: bool) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if eight_bit:
        from plmkit.quant.bnb import require

        return require("full-adamw8bit").optim.AdamW8bit(params, lr=1e-4)
    try:
        return torch.optim.AdamW(params, lr=1e-4, fused=True)
    except (RuntimeError, TypeError):  # fused AdamW is not available on every device / build
        return torch.optim.AdamW(params, lr=1e-4)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def release_freed_memory() -> None:
    """Return freed heap pages to the OS (glibc keeps them otherwise: the float weights a quantized model
    was built from would still count in its resident set)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def worker(name: str, args: argparse.Namespace) -> dict:
    """One configuration, in this (fresh) process."""
    import gc

    import plmkit.peft as peft
    from plmkit.model import build_model
    from plmkit.quant import quantize

    device = torch.device(args.device)
    torch.manual_seed(0)
    model = build_model(args.preset, dropout=0.0)
    if name.startswith("qlora-"):
        quantize(model, name.removeprefix("qlora-"))
    if name != "full" and not name.startswith("full-"):
        model = peft.apply(model, "lora", r=args.r, target=args.target)
    model = model.to(device).train()
    optimizer = make_optimizer(model, eight_bit=name == "full-adamw8bit")
    generator = torch.Generator().manual_seed(1)
    batches = [
        torch.randint(0, model.config.vocab_size, (args.batch, args.seq), generator=generator).to(device)
        for _ in range(4)
    ]
    gc.collect()
    release_freed_memory()
    after_setup = current_rss()
    reset = reset_peak()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times, losses, state_bytes = [], [], 0
    for step in range(args.warmup + args.steps):
        ids = batches[step % len(batches)]
        sync(device)
        start = time.perf_counter()
        loss = model(ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync(device)
        if step >= args.warmup:
            times.append(time.perf_counter() - start)
        if step == 0:
            state_bytes = optimizer_state_bytes(optimizer)
        losses.append(round(loss.item(), 4))
    peak = peak_rss()
    row = {
        "config": name,
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "optimizer_state_bytes": state_bytes,
        "step_ms": round(1000 * statistics.median(times), 2),
        "first_loss": losses[0],
        "peak_rss_bytes": peak,
        "peak_rss_growth_bytes": peak - after_setup,  # activations, gradients, optimizer state
        "rss_after_setup_bytes": after_setup,
        "peak_rss_is_training_only": reset,
    }
    if device.type == "cuda":
        row["peak_cuda_bytes"] = torch.cuda.max_memory_allocated()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="gpt2-small")
    parser.add_argument("--r", type=int, default=8)
    parser.add_argument("--target", default="attn.qkv")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS[:4]), choices=CONFIGS)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # internal: run one configuration
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.worker:
        print(json.dumps(worker(args.worker, args)), flush=True)
        return

    print(
        json.dumps(
            {
                "setup": True,
                "preset": args.preset,
                "device": args.device,
                "threads": args.threads,
                "batch": args.batch,
                "seq": args.seq,
                "r": args.r,
                "target": args.target,
            }
        ),
        flush=True,
    )
    common = [
        f"--{k}={getattr(args, k)}"
        for k in ("preset", "r", "target", "batch", "seq", "steps", "warmup", "threads", "device")
    ]
    results = {}
    for name in args.configs:
        out = subprocess.run(
            [sys.executable, __file__, *common, f"--worker={name}"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        results[name] = json.loads(out.strip().splitlines()[-1])
        print(json.dumps(results[name]), flush=True)
    if "full" not in results:
        return
    full = results["full"]
    summary: dict = {"summary": True}
    for name, row in results.items():
        if name == "full":
            continue
        summary[name] = {
            "trainable_ratio": round(row["trainable_parameters"] / full["trainable_parameters"], 6),
            "optimizer_state_reduction": round(
                1 - row["optimizer_state_bytes"] / full["optimizer_state_bytes"], 6
            ),
            "peak_rss_ratio": round(row["peak_rss_bytes"] / full["peak_rss_bytes"], 3),
            "step_time_ratio": round(row["step_ms"] / full["step_ms"], 3),
            # LoRA starts at the base model (0); QLoRA at the quantized one (a small difference)
            "first_loss_delta": round(row["first_loss"] - full["first_loss"], 4),
        }
        if "peak_cuda_bytes" in row:
            summary[name]["peak_cuda_ratio"] = round(row["peak_cuda_bytes"] / full["peak_cuda_bytes"], 3)
    if "lora" in summary:
        summary["goal_optimizer_state_reduction_ge_0.90"] = (
            summary["lora"]["optimizer_state_reduction"] >= 0.90
        )
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
