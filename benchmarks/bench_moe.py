"""A mixture-of-experts training step: plmkit against transformers' Mixtral on the same weights.

    python benchmarks/bench_moe.py [--batch 4] [--seq 256] [--threads N] [--out benchmarks/results] [--tiny]

The model: Mixtral on benchmarks/run.py's 6x384 shape (6 heads, 3 kv heads, vocabulary 8192, SwiGLU
experts of width 1024 as llama's MLP there), 8 experts, top-2. transformers builds it (seed 0, every
parameter nudged), save_pretrained writes it, and both sides load that folder (BENCHMARKING.md rule 1).
A step = forward + loss (CE + 0.001 · load-balancing loss on both sides: transformers with
output_router_logits) + backward + fused AdamW (lr 1e-4) + zero_grad, fp32.

Variants, timed in interleaved rounds (rule 2, 3): plmkit; transformers with its default experts
implementation (torch's grouped_mm where it runs, as in transformers >= 5) and with "eager" (a Python
loop over the experts); and the matrix products of plmkit's step replayed alone at their shapes, layouts
and expert groups (its matmul bound). Each row also gives the same rounds in process CPU seconds
(`cpu_time`: on a loaded machine wall time also counts the time other processes held the cores).
Checked before timing: logits within 1e-4, router logits within
1e-4, step-1 losses within 1e-5. The GEMM peak (a 2048^3 matmul) is measured in the same run; MFU =
6 · N_active · tokens/s / peak, N_active = the parameters a token uses (2 of 8 experts, no position table).

Prints one JSON line per comparison; writes benchmarks/results/moe-<cpu>-<date>.json.
--tiny shrinks everything to seconds (tests of this script; not figures).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchkit, when run as a script

import torch  # noqa: E402
from benchkit import limits, rows  # noqa: E402
from benchkit import rounds as R  # noqa: E402
from benchkit.train import GEMMS, GemmRecorder, Step  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
ATOL = 1e-4
LOSS_ATOL = 1e-5
GROUPED = {torch.ops.aten._grouped_mm.default}


def mixtral_config(tiny: bool):
    import transformers as T

    size = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                intermediate_size=128, vocab_size=512, max_position_embeddings=128)  # fmt: skip
    if not tiny:
        size = dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=6, num_key_value_heads=3,
                    intermediate_size=1024, vocab_size=8192, max_position_embeddings=1024)  # fmt: skip
    return T.MixtralConfig(
        **size,
        num_local_experts=8,
        num_experts_per_tok=2,
        output_router_logits=True,
        bos_token_id=1,
        eos_token_id=2,
    )


def save_reference(folder: Path, tiny: bool) -> Path:
    import transformers as T

    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = T.MixtralForCausalLM(mixtral_config(tiny))
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.02 * torch.randn(p.shape, generator=g))
    model.save_pretrained(folder)
    return folder


def active_parameters(model) -> int:
    """Parameters one token uses: everything but the unchosen experts (top_k of n_experts)."""
    c = model.config
    total = sum(p.numel() for p in model.parameters())
    experts = sum(p.numel() for n, p in model.named_parameters() if ".experts." in n)
    return total - experts + experts * c.top_k // c.n_experts


class GroupedRecorder(GemmRecorder):
    """benchkit's GEMM recorder, also recording torch's grouped products with their group offsets."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in GEMMS or func in GROUPED:
            spec = [
                a.clone()  # the offsets: integers kept as they were
                if isinstance(a, torch.Tensor) and not a.is_floating_point()
                else (tuple(a.shape), a.dtype, a.dim() >= 2 and a.stride(-2) == 1 and a.stride(-1) != 1)
                if isinstance(a, torch.Tensor)
                else a
                for a in args
            ]
            kw = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in (kwargs or {}).items()}
            self.calls.append((func, spec, kw))
        return func(*args, **(kwargs or {}))


def matmul_replay(step: Step):
    """A callable running the GEMMs and grouped GEMMs of one plmkit step (recorded on a copy)."""
    probe = copy.deepcopy(step.model)
    recorder = GroupedRecorder()
    with recorder:
        Step(probe, step.precision, step.batch, step.device)()
    del probe
    cache: dict = {}

    def tensor(shape, dtype, transposed):
        key = (shape, dtype, transposed)
        if key not in cache:
            if transposed:
                cache[key] = torch.randn(*shape[:-2], shape[-1], shape[-2]).to(dtype).transpose(-1, -2)
            else:
                cache[key] = torch.randn(shape).to(dtype)
        return cache[key]

    calls = [
        (f, [tensor(*a) if isinstance(a, tuple) else a for a in spec], kw) for f, spec, kw in recorder.calls
    ]

    def replay() -> None:
        for f, args, kw in calls:
            f(*args, **kw)

    return replay, len(calls), sum(f in GROUPED for f, _, _ in calls)


class CpuTimed:
    """A variant that also records this process's CPU seconds per call."""

    def __init__(self, f) -> None:
        self.f, self.seconds = f, []

    def __call__(self):
        start = time.process_time()
        out = self.f()
        self.seconds.append(time.process_time() - start)
        return out


def cpu_rounds(timers: dict, comparison: dict, plan: R.Plan) -> dict[str, list[float]]:
    """Per variant, the mean CPU seconds per call of each round's block (R.compare's call sequence: the
    warm-up calls, then one block of calls_per_block calls per round)."""
    out = {}
    for name, timer in timers.items():
        n, start = comparison["calls_per_block"][name], max(1, plan.warmup)
        blocks = [
            timer.seconds[start + i * n : start + (i + 1) * n] for i in range(len(comparison["rounds"]))
        ]
        out[name] = [sum(b) / len(b) for b in blocks]
    return out


def ratio_of(reference: list[float], ours: list[float]) -> dict:
    values = [a / b for a, b in zip(reference, ours, strict=True)]
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "rounds": len(values),
    }


def checks(ours, theirs, vocab: int) -> dict:
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(5, vocab, (2, 16), generator=g)
    with torch.no_grad():
        a = ours.eval()(ids)
        b = theirs.eval()(ids, output_router_logits=True)
    return {
        "logits_max_diff": float((a.logits - b.logits).abs().max()),
        "router_logits_max_diff": max(
            float((x - y).abs().max()) for x, y in zip(a.router_logits, b.router_logits, strict=True)
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", default=None, help="default: benchmarks/results (--tiny: nothing written)")
    parser.add_argument("--tiny", action="store_true", help="seconds-long run of this script (no figures)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import transformers as T

    from plmkit.model.hf import load_hf

    if args.tiny:
        args.batch, args.seq = 2, 32
    plan = (
        R.Plan(warmup=1, rounds=1, max_rounds=1, block_s=0.01, wait_s=0, probe_s=0.1, budget_s=5)
        if args.tiny
        else R.Plan(warmup=1, rounds=5, max_rounds=8, block_s=0.5, wait_s=10, probe_s=1, budget_s=300)
    )
    machine = limits.machine()
    peak = limits.gemm_peak(
        torch.float32, 256 if args.tiny else 2048, 2 if args.tiny else 3, 0.05 if args.tiny else 2.0
    )
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_reference(Path(tmp), args.tiny)
        ours, _ = load_hf(folder)
        reference = T.MixtralForCausalLM.from_pretrained(folder, attn_implementation="sdpa")
        eager = T.MixtralForCausalLM.from_pretrained(
            folder, attn_implementation="sdpa", experts_implementation="eager"
        )
    vocab = ours.config.vocab_size
    check = checks(ours, reference, vocab)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, vocab, (args.batch, args.seq), generator=g)
    batch = {"input_ids": ids, "labels": ids.clone()}
    steps = {
        "plmkit": Step(ours, "fp32", batch, "cpu"),
        "transformers": Step(reference, "fp32", batch, "cpu"),
        "transformers_eager": Step(eager, "fp32", batch, "cpu"),
    }
    first = {name: step() for name, step in steps.items()}  # step 1 from the same weights and batch
    check["step1_loss"] = first
    check["experts_implementation"] = {
        "transformers": reference.config._experts_implementation,
        "transformers_eager": eager.config._experts_implementation,
    }
    failed = [
        f"{k} {v:.2e} > {ATOL:g}" for k, v in check.items() if k.endswith("max_diff") and not v <= ATOL
    ] + [
        f"step-1 loss of {n} differs by {abs(v - first['plmkit']):.2e}"
        for n, v in first.items()
        if abs(v - first["plmkit"]) > LOSS_ATOL
    ]
    setup = {
        "setup": True, "model": "mixtral", "shape": f"{reference.config.num_hidden_layers}x{reference.config.hidden_size}",
        "experts": 8, "top_k": 2, "expert_width": reference.config.intermediate_size, "vocab": vocab,
        "batch": args.batch, "seq": args.seq, "precision": "fp32", "gemm_peak_gflops_fp32": peak,
        "machine": machine, "check": check, "tiny": args.tiny,
    }  # fmt: skip
    print(json.dumps(setup), flush=True)
    result: dict = {**setup, "rows": []}
    if failed:
        result["rows"].append(rows.not_timed("train", "moe step", "failed", "; ".join(failed)))
    else:
        replay, n_calls, n_grouped = matmul_replay(steps["plmkit"])
        variants = {**steps, "matmuls": replay}
        timers = {name: CpuTimed(f) for name, f in variants.items()}
        comparison = R.compare(timers, plan)
        cpu = cpu_rounds(timers, comparison, plan)
        tokens = args.batch * args.seq
        n_active = active_parameters(ours)
        bound = R.seconds(comparison["rounds"], "matmuls")
        for reference_name in ("transformers", "transformers_eager"):
            label = (
                f"train moe {setup['shape']} 8x top-2 seq {args.seq} b{args.batch} fp32 vs {reference_name}"
            )
            r = rows.timed("train", label, "moe", comparison, "plmkit", reference_name, "ms/step",
                           reference_name=reference_name)  # fmt: skip
            mfu = {
                side: 6 * n_active * tokens / (r[side] / 1000) / (peak * 1e9)
                for side in ("plmkit", "reference")
            }
            reference_fraction = R.ratio(comparison["rounds"], "matmuls", reference_name)["median"]
            r["limit"] = {
                "name": "matmul bound (plmkit's GEMMs and grouped GEMMs replayed)",
                "bound_ms": 1000 * bound,
                "gemm_calls": n_calls,
                "grouped_gemm_calls": n_grouped,
                "fraction": R.ratio(comparison["rounds"], "matmuls", "plmkit")["median"],
                "reference_fraction": reference_fraction,
                "active_parameters": n_active,
                "mfu": mfu["plmkit"],
                "reference_mfu": mfu["reference"],
                "peak_gflops": peak,
            }
            # the same rounds in this process's CPU seconds: what the time-slicing of a loaded machine
            # adds to wall time drops out (shared caches and memory bandwidth still count)
            r["cpu_time"] = {
                "plmkit_ms": 1000 * statistics.median(cpu["plmkit"]),
                "reference_ms": 1000 * statistics.median(cpu[reference_name]),
                "ratio": ratio_of(cpu[reference_name], cpu["plmkit"]),
                "matmul_bound_fraction": statistics.median(
                    m / o for m, o in zip(cpu["matmuls"], cpu["plmkit"], strict=True)
                ),
            }
            rows.ratio_at_least(r, 1.25, reference_name)
            if reference_fraction is not None and reference_fraction >= 0.8:
                r["goal_note"] = (
                    f"{reference_name} runs at {reference_fraction:.2f} of the matmul bound: 1.25x would need "
                    "plmkit's step faster than its own matrix products"
                )
            result["rows"].append(r)
        result["rounds"] = comparison["rounds"]
    for r in result["rows"]:
        print(json.dumps(r), flush=True)
    if not args.tiny or args.out:
        out = Path(args.out or Path(__file__).resolve().parent / "results")
        out.mkdir(parents=True, exist_ok=True)
        from benchkit.report import result_path

        path = result_path(out, f"moe-{limits.slug(machine['cpu']['model'])}")
        path.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
        print(json.dumps({"written": str(path)}))


if __name__ == "__main__":
    main()
