"""Greedy decoding speed: plmkit's generate path vs transformers' generate(), same weights, same run.

    python benchmarks/bench_generate.py [--new-tokens 128] [--repeats 3] [--threads 2]

For each model (a ~14M-parameter GPT-2 and a BART of similar size, random weights built in
transformers and loaded into plmkit through plmkit.model.hf) and batch size (1 and 8), both sides
decode the same prompts greedily for exactly N new tokens (EOS disabled) and must produce identical
ids. Prints one JSON line per case with tokens/s of each side and the ratio plmkit / transformers.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import torch


def build_reference(kind: str):
    import transformers as T

    torch.manual_seed(0)
    if kind == "gpt2":
        config = T.GPT2Config(vocab_size=32000, n_embd=256, n_layer=6, n_head=4, n_positions=512)
        return T.GPT2LMHeadModel(config).eval()
    config = T.BartConfig(
        vocab_size=32000,
        d_model=256,
        encoder_layers=3,
        decoder_layers=3,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=1024,
        decoder_ffn_dim=1024,
        max_position_embeddings=512,
    )
    return T.BartForConditionalGeneration(config).eval()


def timed(fn, repeats: int) -> tuple[float, torch.Tensor]:
    fn()  # warm-up (allocator, lazy init)
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--prompt-length", type=int, default=16)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from plmkit.model.hf import load_hf

    for kind in ("gpt2", "bart"):
        reference = build_reference(kind)
        with tempfile.TemporaryDirectory() as folder:
            reference.save_pretrained(folder)
            ours, _ = load_hf(folder)
        for batch in (1, 8):
            print(json.dumps(bench_case(kind, reference, ours, batch, args)), flush=True)


def bench_case(kind: str, reference, ours, batch: int, args: argparse.Namespace) -> dict:
    from plmkit.generation import generate_ids

    n = args.new_tokens
    ids = torch.randint(3, 32000, (batch, args.prompt_length), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)

    def run_reference() -> torch.Tensor:
        with torch.inference_mode():
            out = reference.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=n,
                min_new_tokens=n,
                do_sample=False,
                num_beams=1,
                pad_token_id=0,
                eos_token_id=None,
                forced_eos_token_id=None,
            )
        return out[:, -n:] if kind == "gpt2" else out[:, 1:]  # BART's output starts with the decoder start

    def run_plmkit() -> torch.Tensor:
        return generate_ids(ours, ids, mask, max_new_tokens=n, eos_token_id=[])

    t_ref, ref_ids = timed(run_reference, args.repeats)
    t_ours, our_ids = timed(run_plmkit, args.repeats)
    return {
        "bench": "greedy_generate",
        "model": kind,
        "parameters": sum(p.numel() for p in ours.parameters()),
        "batch": batch,
        "prompt_tokens": args.prompt_length,
        "new_tokens": n,
        "threads": args.threads,
        "plmkit_tokens_per_s": round(batch * n / t_ours, 1),
        "transformers_tokens_per_s": round(batch * n / t_ref, 1),
        "plmkit_ms_per_step": round(1000 * t_ours / n, 3),
        "transformers_ms_per_step": round(1000 * t_ref / n, 3),
        "speedup": round(t_ref / t_ours, 2),
        "identical_ids": bool(torch.equal(ref_ids, our_ids)),
    }


if __name__ == "__main__":
    main()
