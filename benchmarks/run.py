"""plmkit against transformers / peft, with the machine's limits measured in the same run: `make bench`.

    python benchmarks/run.py [--quick] [--only GROUP ...] [--out benchmarks/results] [--threads N]
    make bench ARGS=--quick

Groups (all by default; --list prints them): decode-gpt2, decode-llama, decode-t5 (6x384, vocab 8192,
batch 1 and 8, fp32 / bf16 / int8 decode weights vs transformers fp32 generate()), decode-124m
(GPT-2-small's shape, batch 1, against the read-bandwidth limit), ttft (first token of a 512-token
prompt), train-gpt2, train-llama, train-bert, train-t5, train-bart, train-lora (seq 256, batch 8, fp32 and bf16),
memory (peak RSS of a checkpointed 12x768 step at seq 1024, plmkit vs transformers), scaling (the PNG),
gpu (CUDA only: bf16 training rows with SDPA, MFU against the device's GEMM peak).

Method (BENCHMARKING.md): the same saved weights on both sides, checked before timing (logits 1e-4,
greedy ids identical, step-1 loss 1e-5; a failed check reports the row failed, untimed); warm-up, then
interleaved rounds in rotating order, each block's others_share / steal_share from /proc/stat, a
bounded wait for a quiet second before each round; the median of per-round ratios over quiet rounds
with min, max and the count. The full run took 12m01s on 2 quiet AMD EPYC cores (8m36s with --precisions fp32), --quick 1m41s (shorter decodes,
smaller training batches and limits, fewer rounds). --tiny shrinks every model and limit to seconds:
for testing this harness, not for figures.

Writes benchmarks/results/<cpu>-<date>.json, .md (the table) and .png; prints one JSON line per row.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchkit, when run as a script

import torch  # noqa: E402
from benchkit import decode, limits, memory, report, train  # noqa: E402
from benchkit import models as M  # noqa: E402
from benchkit import rounds as R  # noqa: E402

DECODE = ["decode-gpt2", "decode-llama", "decode-t5", "decode-124m", "ttft"]
TRAIN = ["train-gpt2", "train-llama", "train-bert", "train-t5", "train-bart", "train-lora"]
GROUPS = [*DECODE, *TRAIN, "memory", "scaling", "gpu"]


def settings(args: argparse.Namespace) -> dict:
    """Shapes, lengths and round plans of this run (--quick, --tiny)."""
    full = {
        "shape": M.Shape(6, 384, 6, 8192, 1024),
        "shape_124m": M.Shape(12, 768, 12, 50257, 1024),
        "memory_shape": M.Shape(12, 768, 12, 50257, 1024),
        "new_tokens": 128,
        "new_tokens_124m": 32,
        "ttft_prompt": 512,
        "train_seq": 256,
        "train_batch": 8,
        "memory_seq": 1024,
        "gpu_shape": M.Shape(12, 768, 12, 8192, 1024),
        "plan": R.Plan(warmup=1, rounds=5, max_rounds=8, block_s=0.5, wait_s=5, probe_s=1, budget_s=90),
        "plan_124m": R.Plan(warmup=1, rounds=3, max_rounds=4, block_s=0.5, wait_s=5, probe_s=1, budget_s=90),
    }
    if args.quick or args.tiny:
        full.update(
            new_tokens=32,
            new_tokens_124m=16,
            train_seq=64,
            train_batch=2,
            memory_shape=M.Shape(4, 256, 4, 8192, 256),
            memory_seq=256,
            gpu_shape=M.Shape(6, 384, 6, 8192, 512),
            plan=R.Plan(warmup=1, rounds=2, max_rounds=3, block_s=0.2, wait_s=1, probe_s=0.5, budget_s=20),
            plan_124m=R.Plan(
                warmup=1, rounds=2, max_rounds=2, block_s=0.2, wait_s=1, probe_s=0.5, budget_s=20
            ),
        )
    if args.tiny:
        tiny = M.Shape(2, 64, 4, 512, 128)
        full.update(
            shape=tiny,
            shape_124m=tiny,
            memory_shape=tiny,
            gpu_shape=tiny,
            new_tokens=8,
            new_tokens_124m=8,
            ttft_prompt=64,
            train_seq=32,
            memory_seq=64,
            plan=R.Plan(warmup=1, rounds=1, max_rounds=2, block_s=0.02, wait_s=0, probe_s=0.1, budget_s=5),
        )
        full["plan_124m"] = full["plan"]
    return full


def run(args: argparse.Namespace) -> dict:
    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    s = settings(args)
    only = set(args.only or GROUPS)
    started = time.perf_counter()
    log(f"machine and limits ({'tiny' if args.tiny else 'quick' if args.quick else 'full'} run)")
    result: dict = {
        "machine": limits.machine(),
        "options": {
            "quick": args.quick,
            "tiny": args.tiny,
            "only": sorted(only),
            "threads": args.threads,
            "precisions": args.precisions,
        },  # fmt: skip
    }
    dtypes = args.precisions
    result["limits"] = (
        limits.measure_tiny(log, dtypes) if args.tiny else limits.measure(args.quick, log, dtypes)
    )
    lim = result["limits"]
    rows: list[dict] = []
    result["group_seconds"] = group_seconds = {}
    clock = [time.perf_counter()]

    def emit(new: list[dict]) -> None:
        now = time.perf_counter()
        group = new[0]["name"] if new else "?"
        group_seconds[group] = round(now - clock[0], 1)  # since the previous group ended: its build and rows
        clock[0] = now
        for r in new:
            fill_bandwidth(r, lim["read_gb_s"])
            print(json.dumps(r, default=str), flush=True)
        rows.extend(new)

    for family in ("gpt2", "llama", "t5"):
        if f"decode-{family}" in only:
            emit(
                decode.decode_rows(
                    family, s["shape"], [1, 8], [*dtypes, "int8"], s["new_tokens"], s["plan"], log
                )
            )
    if "decode-124m" in only:
        new = decode.decode_rows(
            "gpt2", s["shape_124m"], [1], [*dtypes, "int8"], s["new_tokens_124m"], s["plan_124m"], log
        )
        for r in new:
            fill_bandwidth(r, lim["read_gb_s"])
        best = max((r["limit"]["fraction"] for r in new if r.get("limit", {}).get("fraction")), default=None)
        for r in new:
            r["name"] = r["name"].replace("decode gpt2", "decode gpt2-small-shape")
            if r["status"] == "ok":
                r["goal"], r["goal_met"] = (
                    "best dtype >= 0.50 of read bandwidth",
                    best is not None and best >= 0.5,
                )
        emit(new)
    if "ttft" in only:
        emit(
            [
                r
                for f in ("gpt2", "llama", "t5")
                for r in decode.ttft_rows(f, s["shape"], s["ttft_prompt"], s["plan"], log)
            ]
        )
    peaks = lim["gemm_gflops"]
    for family in ("gpt2", "llama", "bert", "t5", "bart", "lora"):
        if f"train-{family}" in only:
            emit(
                train.train_rows(
                    family,
                    s["shape"],
                    s["train_batch"],
                    s["train_seq"],
                    dtypes,
                    peaks,
                    s["plan"],
                    log,
                )
            )
    if "memory" in only:
        emit([memory.rss_row(s["memory_shape"], s["memory_seq"], 1, log)])
    if "scaling" in only and not args.tiny:
        result["scaling"] = memory.scaling(args.quick, log)
    if "gpu" in only and torch.cuda.is_available():
        n = 2048 if args.tiny else 8192
        lim["gpu"] = {
            "device": torch.cuda.get_device_name(0),
            "gemm_gflops_bf16": limits.gemm_peak(torch.bfloat16, n, 3, 1.0, device="cuda"),
        }
        for family in ("gpt2", "llama"):
            emit(
                train.train_rows(
                    family,
                    s["gpu_shape"],
                    8,
                    s["memory_seq"],
                    ["bf16"],
                    {"bf16": lim["gpu"]["gemm_gflops_bf16"]},
                    s["plan"],
                    log,
                    device="cuda",
                )
            )
    result["rows"] = rows
    result["seconds"] = time.perf_counter() - started
    return result


def fill_bandwidth(r: dict, read_gb_s: float) -> None:
    """Decode rows: the bandwidth bound per step (weight bytes / read bandwidth) and the fraction of it."""
    limit = r.get("limit")
    if not limit or limit.get("name") != "read bandwidth" or limit.get("bound_ms_per_step") is not None:
        return
    limit["read_gb_s"] = read_gb_s
    limit["bound_ms_per_step"] = 1000 * limit["weight_bytes_per_step"] / (read_gb_s * 1e9)
    limit["fraction"] = limit["bound_ms_per_step"] / limit["measured_ms_per_step"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="~2 minutes: shorter decodes, fewer rounds")
    parser.add_argument("--tiny", action="store_true", help="tiny models and limits: tests this harness")
    parser.add_argument("--only", nargs="+", choices=GROUPS, metavar="GROUP", help="run only these groups")
    parser.add_argument("--list", action="store_true", help="print the groups and exit")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument(
        "--precisions", nargs="+", choices=list(limits.DTYPES), default=list(limits.DTYPES),
        help="float dtypes of the training rows, decode weights and GEMM peaks (default: all); fp32 alone "
        "on a CPU without native bf16 (AVX2), where bf16 runs emulated and takes many minutes",
    )  # fmt: skip
    parser.add_argument("--job", help=argparse.SUPPRESS)  # internal: one memory measurement, in this process
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.job:
        job = json.loads(args.job)
        print(json.dumps(memory.rss_job(job) if job["kind"] == "rss" else memory.scaling_job(job)))
        return
    if args.list:
        print("\n".join(GROUPS))
        return
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    result = run(args)
    paths = report.write(result, args.out, limits.slug(result["machine"]["cpu"]["model"]))
    print(f"wrote {', '.join(str(p) for p in paths.values())}", file=sys.stderr)


if __name__ == "__main__":
    main()
