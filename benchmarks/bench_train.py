"""Training speed and model FLOPs utilisation: plmkit vs transformers (GPT-2, BERT), same weights, same run.

    python benchmarks/bench_train.py [--no-compile | --compile-only] [--steps 6] [--warmup 2]
                                     [--models gpt2 bert] [--precisions fp32 bf16] [--threads N]
                                     [--no-mmap] [--profile]

Both sides get identical architectures and weights: the transformers model (GPT2LMHeadModel or
BertForMaskedLM, attn_implementation="sdpa", every dropout 0) is built with random weights, saved
with save_pretrained and loaded into plmkit with plmkit.model.hf.load_hf. Default size: 6 layers,
d_model 384, 6 heads, d_ff 1536, sequence 256, batch 8, vocabulary 8192 (a small-tokenizer size;
GPT-2's 50257 would make the output layer dominate the step at this width), positions = sequence.

One training step = forward + loss + backward + AdamW step (fused, lr 1e-4, as plmkit's trainer
uses on CPU) + zero_grad; no clipping, no accumulation. GPT-2: causal LM on random tokens
(labels = inputs, both models shift inside). BERT: masked LM, 15% of positions replaced by a mask
id and carrying labels, the rest -100. Both sides train on the same cycle of batches; the losses of
step 1 (same weights, same batch, before any update) must agree (`step1_loss_match`), which shows
the configs match, and later losses keep tracking because the updates are identical too.

Timing: steps alternate plmkit / transformers, so load from other processes hits both alike; warm-up
steps are excluded. A step counts only when both sides of its pair got >= --quiet of the cores
(process CPU time / wall time / threads); busy pairs are repeated up to --max-extra-steps times, and
if fewer than 3 pairs were quiet every pair is kept (`too_busy_to_filter`). Reported per side: the
median step (tokens/s, `speedup`), the fastest step (`speedup_min`) and the median ratio of
neighbouring steps (`speedup_paired`). Cases: model x precision (fp32, bf16 autocast) x mode
(eager, torch.compile of the model; the optimizer step stays eager). `compile_s` = first step minus
a steady one (small when inductor's on-disk cache already holds the graphs). A compile failure is
reported in the case's line, not raised.

MFU = model FLOPs/s / measured matmul peak of this machine for the case's dtype (best of several
torch.mm of 2048x2048 in fp32 or bf16, measured at the start, before each case and at the end; a
case line uses the best so far, the summary rescales all MFUs to the best of the run). Model FLOPs
per token = 6·N with N = all parameters (tied embeddings counted once; the position and segment
tables, <2% here, are counted although they are lookups), as the issue defines it; `mfu_attn` adds
the attention score/value matmuls, 12·L·T·d per token (fwd + bwd, causal not halved, PaLM's
convention).

Prints a setup line, one JSON line per case and a summary line with the ratios plmkit / transformers,
bf16 over fp32 per side, and bf16's loss minus fp32's after the same updates. --no-mmap makes glibc
keep freed memory for reuse (both sides; shows what the allocator costs). --profile prints
torch.profiler's top operators of plmkit's eager step to stderr instead of benchmarking.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch


# ---- machine peak ------------------------------------------------------------------------------
def matmul_peak(dtype: torch.dtype, n: int = 2048, repeats: int = 6) -> float:
    """Best GFLOP/s of an n x n x n torch.mm in `dtype` (the machine's practical matmul peak)."""
    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    torch.mm(a, b)
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def keep_freed_memory() -> bool:
    """glibc: serve every allocation from the heap and never trim it, so the large activation and
    logits buffers of each step reuse pages instead of being mmap-ed (and page-faulted) afresh."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_max = -1, -4
    return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 2**31 - 1))


def cpu_features() -> dict:
    def probe(name: str):
        fn = getattr(torch.cpu, name, None)
        return bool(fn()) if fn is not None else None

    return {
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "amx": probe("_is_amx_tile_supported"),
        "avx512_bf16": probe("_is_avx512_bf16_supported"),
    }


# ---- models and data ---------------------------------------------------------------------------
def reference_config(kind: str, args: argparse.Namespace):
    import transformers as T

    if kind == "gpt2":
        return T.GPT2Config(
            vocab_size=args.vocab,
            n_embd=args.d_model,
            n_layer=args.layers,
            n_head=args.heads,
            n_inner=4 * args.d_model,
            n_positions=args.seq,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            bos_token_id=0,
            eos_token_id=0,
        )
    return T.BertConfig(
        vocab_size=args.vocab,
        hidden_size=args.d_model,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        intermediate_size=4 * args.d_model,
        max_position_embeddings=args.seq,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )


def reference_class(kind: str):
    import transformers as T

    return T.GPT2LMHeadModel if kind == "gpt2" else T.BertForMaskedLM


def save_reference(kind: str, args: argparse.Namespace, folder: Path) -> None:
    torch.manual_seed(0)
    model = reference_class(kind)(reference_config(kind, args))
    model.save_pretrained(folder)


def load_pair(kind: str, folder: Path):
    """(plmkit model, transformers model), both in train mode with the weights saved in `folder`."""
    from plmkit.model.hf import load_hf

    ours, _ = load_hf(folder)
    reference = reference_class(kind).from_pretrained(folder, attn_implementation="sdpa")
    if reference.config._attn_implementation != "sdpa":
        raise RuntimeError(
            f"transformers chose attention {reference.config._attn_implementation!r}, not sdpa"
        )
    return ours.train(), reference.train()


def make_batches(kind: str, args: argparse.Namespace, mask_id: int = 4) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    batches = []
    for _ in range(args.distinct_batches):
        ids = torch.randint(5, args.vocab, (args.batch, args.seq), generator=g)
        if kind == "gpt2":
            batches.append({"input_ids": ids, "labels": ids.clone()})
            continue
        masked = torch.rand(ids.shape, generator=g) < 0.15
        labels = ids.masked_fill(~masked, -100)
        batches.append({"input_ids": ids.masked_fill(masked, mask_id), "labels": labels})
    return batches


# ---- one training step ---------------------------------------------------------------------------
class Trainer:
    """A model (possibly compiled), its AdamW and the precision context: `step(batch)` -> loss."""

    def __init__(self, model: torch.nn.Module, precision: str, compiled: bool, lr: float) -> None:
        self.model = model
        self.forward = torch.compile(model) if compiled else model
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=lr, fused=True)
        self.precision = precision

    def autocast(self):
        if self.precision == "bf16":
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def step(self, batch: dict[str, torch.Tensor]) -> float:
        with self.autocast():
            loss = self.forward(**batch).loss
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())


def graph_stats() -> dict:
    from torch._dynamo.utils import counters

    return {
        "graphs": int(counters["stats"]["unique_graphs"]),
        "graph_breaks": int(sum(counters["graph_break"].values())),
    }


def run_case(kind: str, precision: str, mode: str, folder: Path, args: argparse.Namespace, peaks) -> dict:
    compiled = mode == "compiled"
    if compiled:
        torch._dynamo.reset()
    ours, reference = load_pair(kind, folder)
    n_ours, n_ref = ours.num_parameters(), reference.num_parameters()
    batches = make_batches(kind, args)
    sides = {
        "plmkit": Trainer(ours, precision, compiled, args.lr),
        "transformers": Trainer(reference, precision, compiled, args.lr),
    }
    losses: dict[str, list[float]] = {name: [] for name in sides}
    times: dict[str, list[float]] = {name: [] for name in sides}  # timed steps (after warm-up)
    shares: dict[str, list[float]] = {name: [] for name in sides}  # CPU time / (wall x threads)
    first_step_s: dict[str, float] = {}
    errors: dict[str, str] = {}
    graphs: dict[str, dict] = {}
    i = 0
    while True:
        batch = batches[i % len(batches)]
        for name, trainer in sides.items():  # alternate the two sides step by step
            if name in errors:
                continue
            if compiled and i == 0:
                from torch._dynamo.utils import counters

                counters.clear()
            start, cpu_start = time.perf_counter(), time.process_time()
            try:
                loss = trainer.step(batch)
            except Exception as e:  # a compile failure is a result to report, not a crash
                if not compiled:
                    raise
                errors[name] = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300]}"
                continue
            elapsed = time.perf_counter() - start
            losses[name].append(loss)
            if i == 0:
                first_step_s[name] = elapsed
                if compiled:
                    graphs[name] = graph_stats()
            if i >= args.warmup:
                times[name].append(elapsed)
                shares[name].append((time.process_time() - cpu_start) / (elapsed * torch.get_num_threads()))
        i += 1
        quiet = quiet_pairs(times, shares, errors, args.quiet)
        done = i - args.warmup
        if len(errors) == len(sides) or (
            done >= args.steps and (len(quiet) >= args.steps or done >= args.steps + args.max_extra_steps)
        ):
            break

    # steps where every side had (nearly) all the cores; all steps if too few were quiet
    quiet = quiet_pairs(times, shares, errors, args.quiet)
    chosen = quiet if len(quiet) >= min(3, args.steps) else list(range(i - args.warmup))
    tokens = args.batch * args.seq
    flops_6n = 6 * n_ours
    flops_attn = flops_6n + 12 * args.layers * args.seq * args.d_model
    peak = peaks["bf16" if precision == "bf16" else "fp32"]
    result = {
        "bench": "train_step",
        "model": kind,
        "precision": precision,
        "mode": mode,
        "parameters": n_ours,
        "parameters_transformers": n_ref,
        "tokens_per_step": tokens,
        "threads": torch.get_num_threads(),
        "peak_gflops": round(peak, 1),
        "timed_steps": len(chosen),
        "busy_steps_dropped": i - args.warmup - len(chosen),
        "too_busy_to_filter": len(quiet) < min(3, args.steps),  # then every step is kept, noisy numbers
    }
    for name in sides:
        if name in errors:
            result[f"{name}_error"] = errors[name]
            continue
        chosen_s = [times[name][k] for k in chosen]
        step_s = statistics.median(chosen_s)
        rate = tokens / step_s
        result[f"{name}_tokens_per_s"] = round(rate, 1)
        result[f"{name}_ms_per_step"] = round(1000 * step_s, 1)
        result[f"{name}_ms_min"] = round(1000 * min(chosen_s), 1)
        result[f"{name}_ms_steps"] = [round(1000 * t) for t in times[name]]
        result[f"{name}_cpu_share"] = [round(x, 2) for x in shares[name]]
        result[f"{name}_mfu"] = round(flops_6n * rate / (peak * 1e9), 3)
        result[f"{name}_mfu_attn"] = round(flops_attn * rate / (peak * 1e9), 3)
        if compiled:  # first step minus a steady one; small when inductor's on-disk cache has the graphs
            result[f"{name}_compile_s"] = round(first_step_s[name] - step_s, 1)
            result[f"{name}_graphs"] = graphs.get(name)
    if not errors:
        result["speedup"] = round(result["plmkit_tokens_per_s"] / result["transformers_tokens_per_s"], 3)
        result["speedup_min"] = round(result["transformers_ms_min"] / result["plmkit_ms_min"], 3)
        paired = [times["transformers"][k] / times["plmkit"][k] for k in chosen]  # neighbouring steps
        result["speedup_paired"] = round(statistics.median(paired), 3)
        diff = abs(losses["plmkit"][0] - losses["transformers"][0])
        result["step1_loss_plmkit"] = round(losses["plmkit"][0], 6)
        result["step1_loss_transformers"] = round(losses["transformers"][0], 6)
        result["step1_loss_abs_diff"] = float(f"{diff:.2e}")
        # fp32: the same sums in another order; bf16: activations rounded at different places
        result["step1_loss_match"] = diff <= (1e-4 if precision == "fp32" else 2e-3) * abs(
            losses["plmkit"][0]
        )
        result["max_loss_abs_diff"] = float(
            f"{max(abs(a - b) for a, b in zip(losses['plmkit'], losses['transformers'])):.2e}"
        )
        result["last_loss_plmkit"] = round(losses["plmkit"][-1], 6)
        result["last_loss_transformers"] = round(losses["transformers"][-1], 6)
    if "plmkit" not in errors:
        result["plmkit_losses"] = [round(x, 5) for x in losses["plmkit"]]  # every step, warm-up included
    return result


def quiet_pairs(
    times: dict[str, list[float]], shares: dict[str, list[float]], errors: dict[str, str], threshold: float
) -> list[int]:
    """Indices of timed steps in which every running side got >= threshold of the cores. Steps under
    0.2 s always count: OpenMP threads spinning past the step's end make their CPU share meaningless."""
    running = [name for name in shares if name not in errors]
    if not running:
        return []
    n = min(len(shares[name]) for name in running)
    return [
        k for k in range(n) if all(shares[name][k] >= threshold or times[name][k] < 0.2 for name in running)
    ]


# ---- profile -------------------------------------------------------------------------------------
def profile_plmkit(kind: str, precision: str, folder: Path, args: argparse.Namespace) -> None:
    from torch.profiler import ProfilerActivity, profile

    ours, _ = load_pair(kind, folder)
    trainer = Trainer(ours, precision, False, args.lr)
    batches = make_batches(kind, args)
    for i in range(2):
        trainer.step(batches[i % len(batches)])
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for i in range(2):
            trainer.step(batches[i % len(batches)])
    print(f"\n== plmkit {kind} {precision} eager: top ops by self CPU time (2 steps) ==", file=sys.stderr)
    print(
        prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.profile_rows), file=sys.stderr
    )


# ---- main ----------------------------------------------------------------------------------------
def geomean(values) -> float | None:
    found = [v for v in values if v]
    return round(math.exp(sum(map(math.log, found)) / len(found)), 3) if found else None


def summarize(results: list[dict]) -> dict:
    """Ratios plmkit / transformers per case: from median steps (`speedup`), from the fastest steps
    (`speedup_min`: the estimate least disturbed by other processes) and the median of neighbouring
    step pairs (`speedup_paired`); MFUs; bf16 autocast over fp32 per side and its loss difference."""
    summary: dict = {"bench": "train_summary"}
    for field in ("speedup", "speedup_min", "speedup_paired"):
        ratios = {f"{r['model']}_{r['precision']}_{r['mode']}": r.get(field) for r in results}
        summary[field] = ratios
        summary[f"{field}_geomean"] = geomean(ratios.values())
    for r in results:
        key = f"{r['model']}_{r['precision']}_{r['mode']}"
        for side in ("plmkit", "transformers"):
            if f"{side}_mfu" in r:
                summary.setdefault(f"{side}_mfu", {})[key] = r[f"{side}_mfu"]
    summary["step1_losses_match"] = all(r.get("step1_loss_match", False) for r in results)
    # bf16 autocast over fp32, per side, and how far bf16 losses sit from fp32's after the same steps
    by_key = {(r["model"], r["precision"], r["mode"]): r for r in results}
    for (model, precision, mode), r in by_key.items():
        fp32 = by_key.get((model, "fp32", mode))
        if precision != "bf16" or fp32 is None:
            continue
        for side in ("plmkit", "transformers"):
            if f"{side}_tokens_per_s" in r and f"{side}_tokens_per_s" in fp32:
                summary.setdefault("bf16_over_fp32", {})[f"{side}_{model}_{mode}"] = round(
                    r[f"{side}_tokens_per_s"] / fp32[f"{side}_tokens_per_s"], 3
                )
                summary.setdefault("bf16_over_fp32_min", {})[f"{side}_{model}_{mode}"] = round(
                    fp32[f"{side}_ms_min"] / r[f"{side}_ms_min"], 3
                )
        if "plmkit_losses" in r and "plmkit_losses" in fp32:  # same data, same number of updates
            n = min(len(r["plmkit_losses"]), len(fp32["plmkit_losses"]))
            summary.setdefault("bf16_minus_fp32_loss_at_step", {})[f"plmkit_{model}_{mode}_step{n}"] = round(
                r["plmkit_losses"][n - 1] - fp32["plmkit_losses"][n - 1], 4
            )
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["gpt2", "bert"], choices=["gpt2", "bert"])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument(
        "--no-compile", action="store_true", help="eager only (compiling takes minutes on 2 cores)"
    )
    parser.add_argument("--compile-only", action="store_true", help="compiled cases only")
    parser.add_argument("--steps", type=int, default=6, help="timed steps per side and case")
    parser.add_argument(
        "--warmup", type=int, default=2, help="untimed first steps (the compile happens here)"
    )
    parser.add_argument(
        "--quiet",
        type=float,
        default=0.9,
        help="time only steps in which both sides got this share of the cores (CPU time / wall / threads); "
        "busy steps are repeated, see --max-extra-steps; 0 keeps every step",
    )
    parser.add_argument(
        "--max-extra-steps", type=int, default=6, help="repeats allowed for busy steps, per case"
    )
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--d-model", type=int, default=384)
    parser.add_argument("--heads", type=int, default=6)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--distinct-batches", type=int, default=2, help="batches cycled through")
    parser.add_argument(
        "--no-mmap",
        action="store_true",
        help="glibc mallopt: keep freed memory for reuse (applies to both sides; measures the allocator's share)",
    )
    parser.add_argument("--profile", action="store_true", help="print plmkit's top ops to stderr, then exit")
    parser.add_argument("--profile-rows", type=int, default=25)
    args = parser.parse_args()
    if args.warmup < 1 or args.steps < 1:
        parser.error("--warmup and --steps must be at least 1")
    torch.set_num_threads(args.threads)
    no_mmap = keep_freed_memory() if args.no_mmap else False
    if args.no_mmap and not no_mmap:
        print("warning: --no-mmap needs glibc; running with the default allocator", file=sys.stderr)
    modes = [] if args.no_compile else ["compiled"]
    if not args.compile_only:
        modes.insert(0, "eager")
    if not modes:
        parser.error("--no-compile and --compile-only leave nothing to run")

    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    with tempfile.TemporaryDirectory() as tmp:
        folders = {}
        for kind in args.models:
            folders[kind] = Path(tmp) / kind
            save_reference(kind, args, folders[kind])
        if args.profile:
            for kind in args.models:
                for precision in args.precisions:
                    profile_plmkit(kind, precision, folders[kind], args)
            return

        peaks = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
        setup = {
            "bench": "train_setup",
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "threads": args.threads,
            **cpu_features(),
            "no_mmap": no_mmap,
            "peak_gflops_start": {k: round(v, 1) for k, v in peaks.items()},
            "config": {
                "layers": args.layers,
                "d_model": args.d_model,
                "heads": args.heads,
                "d_ff": 4 * args.d_model,
                "seq": args.seq,
                "batch": args.batch,
                "vocab": args.vocab,
            },
        }
        print(json.dumps(setup), flush=True)
        results = []
        for mode in modes:
            for kind in args.models:
                for precision in args.precisions:
                    for dtype_name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
                        peaks[dtype_name] = max(peaks[dtype_name], matmul_peak(dtype, repeats=3))
                    result = run_case(kind, precision, mode, folders[kind], args, peaks)
                    results.append(result)
                    print(json.dumps(result), flush=True)
    # the machine's peak: the best of all measurements (another process may have been busy at times)
    end = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    best = {k: max(peaks[k], end[k]) for k in peaks}
    for r in results:  # rescale every MFU to the best peak seen in the whole run
        scale = r["peak_gflops"] / best["bf16" if r["precision"] == "bf16" else "fp32"]
        for key in [k for k in r if k.endswith(("_mfu", "_mfu_attn"))]:
            r[key] = round(r[key] * scale, 3)
    summary = summarize(results)
    summary["peak_gflops"] = {k: round(v, 1) for k, v in best.items()}
    summary["peak_gflops_end"] = {k: round(v, 1) for k, v in end.items()}
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
