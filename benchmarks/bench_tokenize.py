"""Tokenization throughput: plmkit's TokenStore.build vs transformers' fast tokenizer, same run.

    python benchmarks/bench_tokenize.py [--copies 3] [--repeats 5] [--vocab-size 16000]

The corpus is WikiText-2 (wiki.test.raw, tokens.valid.txt, tokens.test.txt) plus the CLUECorpusSmall
sample from ../shared/data, one document per non-blank line, written `--copies` times into one file.
A byte-level BPE is trained on a sample and saved as tokenizer.json; both sides load that same file.

- plmkit: `TokenStore.build` end to end (read, tokenize, write the memory-mapped store and its
  checksums) into an empty cache, then the cache hit of a second build.
- transformers: `PreTrainedTokenizerFast(tokenizer_file=...)` batch-encoding the same documents in
  batches of 1000 (the `datasets.map(batched=True)` default), read with a plain `open()`.

Both must produce the same number of tokens (plmkit adds one eos per document, not counted).
Prints one JSON line per case: tokens/s of each side and the ratio plmkit / transformers.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from itertools import islice
from pathlib import Path

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
FILES = [
    "wikitext2/wiki.test.raw",
    "wikitext2/tokens.valid.txt",
    "wikitext2/tokens.test.txt",
    "cluecorpussmall_sample/cluecorpussmall_sampled.txt",
]


def interleaved_medians(fns: list, repeats: int) -> tuple[list[float], list]:
    """Median seconds of each function, run in turns (A, B, A, B, ...) so that a change in machine
    load during the run affects every side alike."""
    times: list[list[float]] = [[] for _ in fns]
    outs: list = [None] * len(fns)
    for _ in range(repeats):
        for k, fn in enumerate(fns):
            start = time.perf_counter()
            outs[k] = fn()
            times[k].append(time.perf_counter() - start)
    return [statistics.median(t) for t in times], outs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=3, help="times the corpus is repeated")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--vocab-size", type=int, default=16000)
    parser.add_argument("--batch", type=int, default=1000, help="documents per transformers call")
    args = parser.parse_args()
    paths = [SHARED_DATA / f for f in FILES]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        print(json.dumps({"skipped": f"datasets not found: {', '.join(missing)}"}))
        return

    from transformers import PreTrainedTokenizerFast

    from plmkit.data import SourceSpec, TokenStore, iter_documents
    from plmkit.tokenizer import Tokenizer

    work = Path(tempfile.mkdtemp(prefix="bench_tokenize_"))
    try:
        corpus = work / "corpus.txt"
        with open(corpus, "wb") as out:
            for _ in range(args.copies):
                for p in paths:
                    out.write(p.read_bytes().replace(b"\r\n", b"\n"))
        spec = SourceSpec(str(corpus))
        sample = [d.text for d in islice(iter_documents(spec), 0, None, 5)]
        tok = Tokenizer.train_bpe(sample, vocab_size=args.vocab_size)
        tok.save(work / "tok")

        def plmkit_build():
            cache = work / "cache"
            shutil.rmtree(cache, ignore_errors=True)
            return TokenStore.build([spec], tok, cache, progress=False)

        def plmkit_cached():
            return TokenStore.build([spec], tok, work / "cache", progress=False)

        hf = PreTrainedTokenizerFast(tokenizer_file=str(work / "tok" / "tokenizer.json"))

        def transformers_encode():
            with open(corpus, encoding="utf-8") as f:
                docs = [line.rstrip("\n") for line in f if line.strip()]
            total = 0
            for i in range(0, len(docs), args.batch):
                ids = hf(docs[i : i + args.batch], add_special_tokens=False)["input_ids"]
                total += sum(map(len, ids))
            return total, len(docs)

        plmkit_build()  # warm-up both sides (file cache, thread pools)
        transformers_encode()
        (ours_s, cached_s, theirs_s), (store, _, (hf_tokens, hf_docs)) = interleaved_medians(
            [plmkit_build, plmkit_cached, transformers_encode], args.repeats
        )
        tokens = store.num_tokens - store.num_documents  # without the eos plmkit appends
        if (tokens, store.num_documents) != (hf_tokens, hf_docs):
            raise SystemExit(
                f"mismatch: plmkit {tokens} tokens / {store.num_documents} documents, "
                f"transformers {hf_tokens} / {hf_docs}"
            )
        common = {
            "documents": hf_docs,
            "tokens": tokens,
            "megabytes": round(corpus.stat().st_size / 2**20, 1),
            "cpus": os.cpu_count(),
            "vocab_size": tok.vocab_size,
        }
        print(
            json.dumps(
                {
                    "case": "tokenize",
                    **common,
                    "plmkit_tokens_per_s": round(tokens / ours_s),
                    "transformers_tokens_per_s": round(tokens / theirs_s),
                    "ratio": round(theirs_s / ours_s, 3),
                    "note": "plmkit: read + tokenize + write store; transformers: read + encode",
                }
            ),
            flush=True,
        )
        print(
            json.dumps(
                {
                    "case": "cache_hit",
                    **common,
                    "build_s": round(ours_s, 3),
                    "cached_s": round(cached_s, 3),
                    "speedup": round(ours_s / cached_s, 1),
                }
            ),
            flush=True,
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
