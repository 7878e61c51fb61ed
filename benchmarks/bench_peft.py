"""Full fine-tuning vs LoRA on the same model in one run: trainable parameters, optimizer state, step time.

    python benchmarks/bench_peft.py [--preset gpt2-small] [--r 8] [--target attn.qkv] [--batch 4]
                                    [--seq 128] [--steps 5] [--warmup 2] [--threads N] [--device cpu]

Both modes start from the same random weights (one model built with a fixed seed, copied). One
training step = forward + causal LM loss + backward + AdamW step (lr 1e-4, fused where the device
supports it) + zero_grad, on the same random-token batches. Full fine-tuning optimizes every
parameter; LoRA (plmkit.peft.apply(model, "lora", r=R, target=TARGET)) only the LoRA factors, so
AdamW keeps its two moments (exp_avg, exp_avg_sq) for those alone.

Optimizer state = bytes of every tensor in optimizer.state after the first step. Steps alternate
between the two modes (so load from other processes hits both alike); warm-up steps are excluded and
the median is reported. On CUDA the peak allocated memory of each mode's steps is reported too.

Prints one JSON line per mode and a summary line with the ratios LoRA / full
(goal: optimizer_state_reduction >= 0.90 for r=8).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    return sum(t.numel() * t.element_size() for state in optimizer.state.values()
               for t in state.values() if torch.is_tensor(t))


def make_optimizer(model: torch.nn.Module, device: torch.device) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    try:
        return torch.optim.AdamW(params, lr=1e-4, fused=True)
    except (RuntimeError, TypeError):  # fused AdamW is not available on every device / build
        return torch.optim.AdamW(params, lr=1e-4)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


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
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    import plmkit.peft as peft
    from plmkit.model import build_model

    torch.manual_seed(0)
    base = build_model(args.preset, dropout=0.0)
    full = copy.deepcopy(base).to(device).train()
    lora = peft.apply(copy.deepcopy(base), "lora", r=args.r, target=args.target).to(device).train()
    del base
    modes = {"full": full, "lora": lora}
    optimizers = {name: make_optimizer(model, device) for name, model in modes.items()}
    generator = torch.Generator().manual_seed(1)
    batches = [torch.randint(0, full.config.vocab_size, (args.batch, args.seq), generator=generator).to(device)
               for _ in range(4)]
    print(json.dumps({"setup": True, "preset": args.preset, "device": str(device), "threads": args.threads,
                      "batch": args.batch, "seq": args.seq, "r": args.r, "target": args.target,
                      "parameters": sum(p.numel() for p in full.parameters())}))

    times: dict[str, list[float]] = {name: [] for name in modes}
    state_bytes: dict[str, int] = {}
    peak: dict[str, int] = {name: 0 for name in modes}
    losses: dict[str, list[float]] = {name: [] for name in modes}
    for step in range(args.warmup + args.steps):
        ids = batches[step % len(batches)]
        for name, model in modes.items():
            optimizer = optimizers[name]
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            sync(device)
            start = time.perf_counter()
            loss = model(ids, labels=ids).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            sync(device)
            elapsed = time.perf_counter() - start
            if device.type == "cuda":
                peak[name] = max(peak[name], torch.cuda.max_memory_allocated())
            if step == 0:
                state_bytes[name] = optimizer_state_bytes(optimizer)
            if step >= args.warmup:
                times[name].append(elapsed)
            losses[name].append(round(loss.item(), 4))

    results = {}
    for name, model in modes.items():
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        results[name] = {
            "mode": name,
            "trainable_parameters": trainable,
            "optimizer_state_bytes": state_bytes[name],
            "step_ms": round(1000 * statistics.median(times[name]), 2),
            "first_loss": losses[name][0],
            **({"peak_memory_bytes": peak[name]} if device.type == "cuda" else {}),
        }
        print(json.dumps(results[name]))
    full_r, lora_r = results["full"], results["lora"]
    reduction = 1 - lora_r["optimizer_state_bytes"] / full_r["optimizer_state_bytes"]
    summary = {
        "summary": True,
        "trainable_ratio": round(lora_r["trainable_parameters"] / full_r["trainable_parameters"], 6),
        "optimizer_state_ratio": round(lora_r["optimizer_state_bytes"] / full_r["optimizer_state_bytes"], 6),
        "optimizer_state_reduction": round(reduction, 6),
        "goal_optimizer_state_reduction_ge_0.90": reduction >= 0.90,
        "step_time_ratio": round(lora_r["step_ms"] / full_r["step_ms"], 3),
        "same_first_loss": full_r["first_loss"] == lora_r["first_loss"],  # LoRA starts at the base model
    }
    if device.type == "cuda":
        summary["peak_memory_ratio"] = round(lora_r["peak_memory_bytes"] / full_r["peak_memory_bytes"], 3)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
