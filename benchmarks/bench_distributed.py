"""Training throughput of one process vs N ranks (DDP, FSDP2, DeepSpeed ZeRO-2, FSDP2 x tensor parallelism)
on the same recipe.

    python benchmarks/bench_distributed.py [--nproc 2] [--threads T] [--steps 30] [--batch 16]
                                           [--d-model 128] [--layers 2] [--block 128]
                                           [--strategies ddp fsdp deepspeed fsdp-tp] [--device cpu|cuda]
                                           [--repeats 1]

Every run is a real `plm pretrain` on the same GPT recipe, corpus, tokenizer and global batch (one
process: batch `batch`; N ranks: batch / N each; `fsdp-tp`: tensor parallelism over all N ranks,
distributed.tensor_parallel=N, so every rank computes its heads of all `batch` rows), fp32. The baseline process gets all T threads, each
rank T / N, so both sides use the same cores. Tokens/s is the median of the per-step rates in
metrics.jsonl after the first 5 steps (no checkpoints or evaluations inside the timed steps). Each
strategy's ranks run right after a fresh one-process run (interleaved, `--repeats` pairs). Prints one
JSON line per strategy with `ratio` = tokens/s of the N ranks / tokens/s of one process (median of the
pairs' ratios).

On a 2-core CPU the ranks cannot be faster than one process using both cores (they add gradient
communication over gloo and the per-rank Python overhead); these runs prove that the strategies work,
GPUs show the speed-up. DeepSpeed's first launch compiles its CPU communication op (~40 s, cached).
On a machine shared with other jobs a multi-threaded process can be several times slower than a
single-threaded one (OpenMP threads wait for each other on oversubscribed cores), which flatters the
ranks; `--threads 1` compares one single-threaded process with N single-threaded ranks instead.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "gpt-clm.yaml"


def corpus_text(n_chars: int) -> str:
    """Real English prose: the Python language reference that ships with CPython (pydoc_data)."""
    from pydoc_data import topics

    text = "\n".join(topics.topics[name].replace("\n\n", "\n") for name in sorted(topics.topics))
    return (text * (1 + n_chars // len(text)))[:n_chars]


def overrides(args: argparse.Namespace, work: Path, out: str, batch: int, threads: int) -> list[str]:
    return [
        f"data.sources=[{{path: {json.dumps(str(work / 'corpus.txt'))}}}]",
        "data.validation=[]",
        "data.validation_fraction=0.0",
        f"data.block_size={args.block}",
        f"data.cache_dir={work / 'cache'}",
        f"tokenizer.path={work / 'tok'}",
        f"model.n_layer={args.layers}",
        f"model.d_model={args.d_model}",
        "model.n_head=4",
        f"model.d_ff={4 * args.d_model}",
        f"train.steps={args.steps}",
        f"train.batch_size={batch}",
        "train.precision=fp32",
        f"train.device={args.device}",
        f"train.threads={threads}",
        "eval.every=0",
        "eval.batches=0",
        "checkpoint.every=0",
        "checkpoint.keep_last=1",
        "log.every=1",
        "log.tensorboard=false",
        "log.plot=false",
        "schedule.warmup_steps=0",
        f"out_dir={work / out}",
    ]


def tokens_per_s(run_dir: Path) -> float:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rates = [r["tokens_per_s"] for r in rows if "tokens_per_s" in r and r["step"] > 5]
    return statistics.median(rates[:-1] if len(rates) > 2 else rates)  # the last row includes the final save


def run(command: list[str], threads: int) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.run(command, env=env, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"{' '.join(command[:6])} ... failed:\n{proc.stderr[-3000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="cores for each side")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=16, help="global batch (sequences per step)")
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--block", type=int, default=128)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--strategies", nargs="+", default=["ddp", "fsdp", "deepspeed", "fsdp-tp"])
    parser.add_argument(
        "--repeats", type=int, default=1, help="pairs (one process, then the ranks) per strategy"
    )
    args = parser.parse_args()
    if args.batch % args.nproc:
        sys.exit("--batch must be a multiple of --nproc (the same global batch on both sides)")
    sys.path.insert(0, str(ROOT / "src"))
    from plmkit.tokenizer import Tokenizer

    work = Path(tempfile.mkdtemp(prefix="plmkit-bench-dist-"))
    try:
        text = corpus_text(400_000)
        (work / "corpus.txt").write_text(text, encoding="utf-8")
        Tokenizer.train([text], kind="bpe", vocab_size=2048).save(work / "tok")
        plm = [sys.executable, "-m", "plmkit", "pretrain", str(RECIPE)]
        per_rank = max(1, args.threads // args.nproc)
        for strategy in args.strategies:
            singles, ranks = [], []
            for repeat in range(args.repeats):  # interleaved: a shared machine's load hits both sides alike
                run(
                    [*plm, *overrides(args, work, f"single-{strategy}-{repeat}", args.batch, args.threads)],
                    args.threads,
                )
                singles.append(tokens_per_s(work / f"single-{strategy}-{repeat}"))
                tp = (
                    strategy == "fsdp-tp"
                )  # one data-parallel group of N tensor-parallel ranks: all rows each
                options = overrides(
                    args, work, f"{strategy}-{repeat}", args.batch // (1 if tp else args.nproc), per_rank
                )
                options += (
                    ["distributed.strategy=fsdp", f"distributed.tensor_parallel={args.nproc}"]
                    if tp
                    else [f"distributed.strategy={strategy}"]
                )
                run([*plm, *options, "--nproc", str(args.nproc)], per_rank)
                ranks.append(tokens_per_s(work / f"{strategy}-{repeat}"))
            print(
                json.dumps(
                    {
                        "bench": "distributed",
                        "strategy": strategy,
                        "nproc": args.nproc,
                        "device": args.device,
                        "threads": args.threads,
                        "global_batch": args.batch,
                        "block": args.block,
                        "d_model": args.d_model,
                        "layers": args.layers,
                        "repeats": args.repeats,
                        "single_tokens_per_s": round(statistics.median(singles)),
                        "ranks_tokens_per_s": round(statistics.median(ranks)),
                        "ratio": round(statistics.median(r / s for r, s in zip(ranks, singles)), 3),
                    }
                ),
                flush=True,
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
