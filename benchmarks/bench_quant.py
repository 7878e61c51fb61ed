"""Greedy decoding speed of int8 / NF4 models vs fp32 on the same weights, in one run; checkpoint sizes.

    python benchmarks/bench_quant.py [--checkpoint DIR] [--modes int8 int8-dynamic nf4] [--batch 1 8]
                                     [--new-tokens 64] [--repeats 3] [--threads N]
                                     [--d-model 256] [--n-layer 6] [--vocab 32000]

Weights: a trained plmkit checkpoint (--checkpoint) or a random GPT-2-shaped model (default: 6 x 256,
vocab 32000, ~27M parameters with the tied embedding). Each mode quantizes a
copy of the same fp32 model with plmkit.quant.quantize. All modes decode the same prompts greedily for
exactly N new tokens (EOS disabled) through plmkit's generate path, timed by benchkit.rounds (run.py's
harness): interleaved rounds in rotating order, the median of per-round ratios over rounds no other
process disturbed (--wait: the bounded wait for a quiet second before each round). identical_ids is the
share of generated tokens equal to fp32's (random weights give nearly flat logits, so small changes flip
the argmax more often than a trained model's confident ones). Checkpoint sizes are model.safetensors
written by plmkit.save. Prints one JSON line per (mode, batch) and a summary with the ratios
(goal: int8 >= 1.5x faster than fp32 at batch 1; int8 checkpoint >= 3.5x smaller).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchkit import rounds as R  # noqa: E402


def build(args: argparse.Namespace):
    import plmkit
    from plmkit.model import build_model

    if args.checkpoint:
        model, _ = plmkit.load(args.checkpoint)
        return model.float().eval()
    torch.manual_seed(0)
    return build_model(
        "gpt2-tiny",
        vocab_size=args.vocab,
        d_model=args.d_model,
        n_layer=args.n_layer,
        n_head=max(1, args.d_model // 64),
        d_ff=4 * args.d_model,
        dropout=0.0,
        max_positions=1024,
    ).eval()


def checkpoint_bytes(model: torch.nn.Module) -> int:
    import plmkit

    with tempfile.TemporaryDirectory() as folder:
        plmkit.save(model, None, Path(folder) / "m")
        return (Path(folder) / "m" / "model.safetensors").stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--checkpoint", default=None, help="a trained plmkit checkpoint (default: random weights)"
    )
    parser.add_argument("--modes", nargs="+", default=["int8", "int8-dynamic", "nf4"])
    parser.add_argument("--batch", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--prompt-length", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3, help="quiet interleaved rounds wanted")
    parser.add_argument("--wait", type=float, default=5.0, help="longest wait for a quiet second per round")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--n-layer", type=int, default=6)
    parser.add_argument("--vocab", type=int, default=32000)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from plmkit.generation import generate_ids
    from plmkit.quant import quantize

    base = build(args)
    models = {"fp32": base, **{mode: quantize(copy.deepcopy(base), mode) for mode in args.modes}}
    sizes = {name: checkpoint_bytes(model) for name, model in models.items()}
    n_params = sum(p.numel() for p in base.parameters())
    print(
        json.dumps(
            {
                "setup": True,
                "weights": args.checkpoint or "random",
                "parameters": n_params,
                "threads": args.threads,
                "new_tokens": args.new_tokens,
                "prompt_length": args.prompt_length,
                "checkpoint_bytes": sizes,
            }
        ),
        flush=True,
    )

    vocab = base.config.vocab_size
    plan = R.Plan(warmup=1, rounds=args.repeats, max_rounds=2 * args.repeats, block_s=0.0, wait_s=args.wait)
    results = []
    for batch in args.batch:
        ids = torch.randint(0, vocab, (batch, args.prompt_length), generator=torch.Generator().manual_seed(1))
        outputs: dict[str, torch.Tensor] = {}

        def decode(name: str, ids=ids, outputs=outputs) -> None:
            outputs[name] = generate_ids(models[name], ids, max_new_tokens=args.new_tokens, eos_token_id=[])

        rounds = R.compare({name: (lambda name=name: decode(name)) for name in models}, plan)["rounds"]
        for name in models:
            ratio = R.ratio(rounds, "fp32", name)
            row = {
                "mode": name,
                "batch": batch,
                "ms_per_token": round(1000 * R.seconds(rounds, name) / args.new_tokens, 3),
                "speedup_vs_fp32": round(ratio["median"], 3),
                "speedup_min_max": [round(ratio["min"], 3), round(ratio["max"], 3)],
                "quiet_rounds": f"{ratio['quiet_rounds']}/{ratio['rounds']}",
                "identical_ids": round(float((outputs[name] == outputs["fp32"]).float().mean()), 4),
                "checkpoint_ratio": round(sizes["fp32"] / sizes[name], 3),
            }
            results.append(row)
            print(json.dumps(row), flush=True)
    int8 = [r for r in results if r["mode"] == "int8" and r["batch"] == 1]
    summary = {
        "summary": True,
        "size_ratio": {m: round(sizes["fp32"] / sizes[m], 3) for m in args.modes},
        "speedup_batch1": {r["mode"]: r["speedup_vs_fp32"] for r in results if r["batch"] == 1},
    }
    if int8:
        summary["goal_int8_speedup_ge_1.5"] = int8[0]["speedup_vs_fp32"] >= 1.5
        summary["goal_int8_size_ratio_ge_3.5"] = sizes["fp32"] / sizes["int8"] >= 3.5
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
