"""Does continuous batching pay? `plm serve` under 16 concurrent clients, each asking for a 64-token greedy
completion, with --max-batch 16 (continuous batching) against --max-batch 1 (the same server serving the
same requests one after another): aggregate tokens/s, p50 / p95 request latency and time to first token.

    python benchmarks/bench_serve.py [--clients 16] [--new-tokens 64] [--rounds 3] [--threads 1]
    python benchmarks/bench_serve.py --tiny          # the test's size: seconds

The model: the 6x384 GPT of benchmarks/run.py (vocab 8192; random weights, seed 0, a byte-level BPE
trained on CPython's pydoc text and, when ../shared/data is there, tinyshakespeare), saved as a checkpoint; both servers are `python -m plmkit serve` child
processes started from it (--threads each, context 256), the clients an asyncio loop of streaming httpx
requests in this process. Each round sends the same 16 prompts (~32 tokens of real text) to both servers
in turn (the order alternates between rounds); a round's others_share (benchkit.contention) says how much
of the machine other processes took meanwhile. The ratio is the median of the per-round ratios.

Checks before timing: every prompt's greedy answer from the --max-batch 16 server alone equals its answer
among the 16 concurrent requests (the goal), and whether it equals the --max-batch 1 server's (rows of 1
and of 4 or more take different CPU GEMM kernels: see plmkit/serve/batcher.py). Beside the servers, the
same prompts through plmkit.generation.generate_ids in this process (batch 1, no HTTP) give the decode
speed without a server.

Prints one JSON document; writes benchmarks/results/serve-<cpu>-<date>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchkit, when run as a script

GOAL = 3.0  # the bar: >= 3x the sequential aggregate throughput


@dataclass(frozen=True)
class Size:
    layers: int = 6
    d_model: int = 384
    heads: int = 6
    vocab: int = 8192
    positions: int = 1024
    context: int = 256  # --max-model-len of the servers
    prompt_tokens: int = 32


TINY = Size(layers=2, d_model=64, heads=4, vocab=512, positions=256, context=128, prompt_tokens=16)


def corpus() -> str:
    from pydoc_data import topics  # real English prose that ships with CPython

    return "\n".join(topics.topics[name] for name in sorted(topics.topics))


def build_checkpoint(folder: Path, size: Size) -> Path:
    import torch

    from plmkit.io import save
    from plmkit.model import ModelConfig, build_model
    from plmkit.tokenizer import Tokenizer

    texts = [corpus()]
    shakespeare = ROOT.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"
    if shakespeare.is_file():  # more distinct pieces: the vocabulary reaches 8192
        texts.append(shakespeare.read_text(encoding="utf-8"))
    tokenizer = Tokenizer.train(texts, kind="bpe", vocab_size=size.vocab, family="gpt2")
    config = ModelConfig(
        family="causal", vocab_size=tokenizer.vocab_size, d_model=size.d_model, n_layer=size.layers,
        n_head=size.heads, d_ff=4 * size.d_model, max_positions=size.positions, dropout=0.0,
        pad_token_id=tokenizer.pad_id, eos_token_id=tokenizer.eos_id,
    )  # fmt: skip
    torch.manual_seed(0)
    save(build_model(config), tokenizer, folder)
    return folder


def prompts(folder: Path, n: int, length: int) -> list[str]:
    """n prompts of about `length` tokens: consecutive paragraphs of the corpus, cut at a token boundary."""
    from plmkit.tokenizer import Tokenizer

    tokenizer = Tokenizer.load(folder)
    ids = tokenizer.encode(corpus()[200_000:])
    return [tokenizer.decode(ids[i * 500 : i * 500 + length]) for i in range(n)]


class Server:
    """`python -m plmkit serve` in a child process; `url` once it says where it listens."""

    def __init__(self, folder: Path, max_batch: int, threads: int, context: int) -> None:
        command = [
            sys.executable, "-m", "plmkit", "serve", str(folder), "--port", "0", "--max-batch", str(max_batch),
            "--threads", str(threads), "--max-model-len", str(context), "--max-queue", "1024",
        ]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": str(threads)}
        self.max_batch = max_batch
        self.process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
        line = self.process.stderr.readline()
        if " at http" not in line:
            self.process.kill()
            raise RuntimeError(f"plm serve did not start: {line}{self.process.stderr.read()}")
        self.url = line.split(" at ")[1].split()[0]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()


async def one_request(client, url: str, prompt: str, new_tokens: int, started: float) -> dict:
    body = {
        "prompt": prompt,
        "max_tokens": new_tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    sent = time.perf_counter()
    first = None
    text, tokens = "", 0
    async with client.stream("POST", url + "/v1/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk["choices"]:
                if first is None:
                    first = time.perf_counter()
                text += chunk["choices"][0]["text"]
            elif chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    done = time.perf_counter()
    return {
        "start": sent - started,
        "ttft": first - sent,
        "latency": done - sent,
        "tokens": tokens,
        "text": text,
    }


async def load(url: str, texts: list[str], new_tokens: int) -> list[dict]:
    """All requests at once, one client each."""
    import httpx

    limits = httpx.Limits(max_connections=len(texts) + 4)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        started = time.perf_counter()
        return await asyncio.gather(*(one_request(client, url, t, new_tokens, started) for t in texts))


async def one_by_one(url: str, texts: list[str], new_tokens: int) -> list[str]:
    import httpx

    async with httpx.AsyncClient(timeout=600) as client:
        return [(await one_request(client, url, t, new_tokens, time.perf_counter()))["text"] for t in texts]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summarize(results: list[dict]) -> dict:
    wall = max(r["start"] + r["latency"] for r in results) - min(r["start"] for r in results)
    tokens = sum(r["tokens"] for r in results)
    latency = [r["latency"] for r in results]
    ttft = [r["ttft"] for r in results]
    return {
        "tokens": tokens,
        "wall_s": round(wall, 3),
        "tokens_per_s": round(tokens / wall, 2),
        "latency_p50_s": round(percentile(latency, 0.5), 3),
        "latency_p95_s": round(percentile(latency, 0.95), 3),
        "ttft_p50_s": round(percentile(ttft, 0.5), 3),
        "ttft_p95_s": round(percentile(ttft, 0.95), 3),
    }


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of a process (/proc/PID/stat), 0.0 where it cannot be read."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def sample(servers: dict):
    """benchkit.contention's sample with the servers' CPU time counted as this benchmark's own."""
    import dataclasses

    from benchkit import contention

    now = contention.sample()
    servers_cpu = sum(process_cpu_seconds(s.process.pid) for s in servers.values())
    return dataclasses.replace(now, own_seconds=now.own_seconds + servers_cpu)


def reference_generate(folder: Path, texts: list[str], new_tokens: int, threads: int) -> dict:
    """The same prompts through plmkit.generation in this process (batch 1, greedy, no server)."""
    import torch

    from plmkit.generation import generate_ids
    from plmkit.io import load as load_checkpoint

    torch.set_num_threads(threads)
    model, tokenizer = load_checkpoint(folder)
    started, tokens = time.perf_counter(), 0
    for text in texts:
        ids = torch.tensor([tokenizer.encode(text)])
        tokens += generate_ids(model, ids, max_new_tokens=new_tokens, eos_token_id=[]).shape[1]
    wall = time.perf_counter() - started
    return {"tokens": tokens, "wall_s": round(wall, 3), "tokens_per_s": round(tokens / wall, 2)}


def run(args: argparse.Namespace) -> dict:
    from benchkit import contention, limits

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    size = TINY if args.tiny else Size()
    clock = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        folder = build_checkpoint(Path(tmp) / "gpt-6x384", size)
        texts = prompts(folder, args.clients, size.prompt_tokens)
        vocab = json.loads((folder / "plmkit.json").read_text())["model"]["vocab_size"]
        log(f"checkpoint and prompts ready ({time.perf_counter() - clock:.0f} s); starting the two servers")
        servers = {}
        try:
            for batch in (1, args.clients):
                servers[batch] = Server(folder, batch, args.threads, size.context)
            sequential, batched = servers[1], servers[args.clients]
            for server in servers.values():  # warm-up: weights prepared, allocator warm
                asyncio.run(one_by_one(server.url, texts[:1], 4))
            log("greedy answers: alone vs under load")
            alone = asyncio.run(one_by_one(batched.url, texts, args.new_tokens))
            together = [r["text"] for r in asyncio.run(load(batched.url, texts, args.new_tokens))]
            single_row = asyncio.run(one_by_one(sequential.url, texts, args.new_tokens))
            greedy = {
                "identical_alone_vs_under_load": alone == together,
                "differing_alone_vs_under_load": sum(a != b for a, b in zip(alone, together)),
                "identical_max_batch_1_vs_16": single_row == alone,
                "differing_max_batch_1_vs_16": sum(a != b for a, b in zip(single_row, alone)),
            }
            log(json.dumps(greedy))
            rounds = []
            for r in range(args.rounds):
                order = [sequential, batched] if r % 2 == 0 else [batched, sequential]
                row = {"round": r}
                for server in order:
                    key = "sequential" if server is sequential else "batched"
                    before = sample(servers)
                    row[key] = summarize(asyncio.run(load(server.url, texts, args.new_tokens)))
                    row[key].update(contention.shares(before, sample(servers), contention.cores()))
                row["ratio"] = round(row["batched"]["tokens_per_s"] / row["sequential"]["tokens_per_s"], 2)
                log(json.dumps(row))
                rounds.append(row)
        finally:
            for server in servers.values():
                server.stop()
        log("reference: plmkit.generation, batch 1, in this process")
        reference = reference_generate(folder, texts, args.new_tokens, args.threads)
    ratios = [r["ratio"] for r in rounds]

    def median_of(key: str, field: str) -> float:
        return round(statistics.median(r[key][field] for r in rounds), 3)

    fields = ("tokens_per_s", "latency_p50_s", "latency_p95_s", "ttft_p50_s", "ttft_p95_s")
    summary = {
        "sequential_max_batch_1": {f: median_of("sequential", f) for f in fields},
        f"batched_max_batch_{args.clients}": {f: median_of("batched", f) for f in fields},
        "throughput_ratio": {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)},
        "goal": f">= {GOAL}x the sequential tokens/s, greedy answers identical alone and under load",
    }
    summary["met"] = summary["throughput_ratio"]["median"] >= GOAL and greedy["identical_alone_vs_under_load"]
    return {
        "benchmark": "serve",
        "machine": limits.machine(),
        "settings": {
            "clients": args.clients,
            "new_tokens": args.new_tokens,
            "rounds": args.rounds,
            "threads": args.threads,
            "model": f"gpt {size.layers}x{size.d_model}, vocab {vocab}, random weights (seed 0)",
            "context": size.context,
            "prompt_tokens": size.prompt_tokens,
            "tiny": args.tiny,
        },
        "greedy": greedy,
        "rounds": rounds,
        "summary": summary,
        "reference_plmkit_generate_batch_1": reference,
        "seconds": round(time.perf_counter() - clock, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each server (default: 1)")
    parser.add_argument("--tiny", action="store_true", help="a tiny model: for testing this script")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    result = run(args)
    print(json.dumps(result, indent=1))
    if not args.no_write:
        from benchkit import limits, report

        args.out.mkdir(parents=True, exist_ok=True)
        kind = "serve-tiny-" if args.tiny else "serve-"
        stem = report.output_stem(args.out, kind + limits.slug(result["machine"]["cpu"]["model"]))
        report.write_text(stem.with_suffix(".json"), json.dumps(result, indent=1) + "\n")
        print(f"wrote {stem.with_suffix('.json')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
