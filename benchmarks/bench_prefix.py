"""Prefix-tuning / P-tuning v2 side by side with full fine-tuning and LoRA on one model, in one run:
trainable parameters, optimizer state and step time; then greedy decoding with a prefix (the MLP's
output reused, or recomputed every step, or folded away) against the base model.

    python benchmarks/bench_prefix.py [--preset gpt2-small] [--n-tokens 20] [--hidden 512] [--batch 4]
                                      [--seq 128] [--steps 4] [--warmup 1] [--new-tokens 48] [--repeats 3]
                                      [--threads N] [--device cpu]

Every mode starts from the same random weights (one model built with a fixed seed, deep-copied).
Training step = forward + causal LM loss + backward + AdamW step + zero_grad on the same random-token
batches; steps alternate between modes, warm-up steps are excluded, the median is reported. Optimizer
state = bytes of every tensor in optimizer.state after the first step.

Decoding: generate_ids, greedy, batch 1, --new-tokens tokens after a 16-token prompt, EOS off; the
median of --repeats runs, modes interleaved. `prefix` is the model as trained (projection MLP kept:
without gradients its output is computed once and reused), `prefix_recompute` runs the MLP at every
model call (what a naive implementation does), `folded` is after plmkit.peft.fold (the MLP replaced by
its output). All three must produce the same ids. Prints JSON lines and a summary of ratios.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    return sum(
        t.numel() * t.element_size()
        for state in optimizer.state.values()
        for t in state.values()
        if torch.is_tensor(t)
    )


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def train(modes: dict, args, device: torch.device, vocab: int) -> dict[str, dict]:
    generator = torch.Generator().manual_seed(1)
    batches = [
        torch.randint(0, vocab, (args.batch, args.seq), generator=generator).to(device) for _ in range(3)
    ]
    optimizers = {
        name: torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4)
        for name, m in modes.items()
    }
    times: dict[str, list[float]] = {name: [] for name in modes}
    state: dict[str, int] = {}
    for step in range(args.warmup + args.steps):
        ids = batches[step % len(batches)]
        for name, model in modes.items():
            sync(device)
            start = time.perf_counter()
            model(ids, labels=ids).loss.backward()
            optimizers[name].step()
            optimizers[name].zero_grad(set_to_none=True)
            sync(device)
            if step == 0:
                state[name] = optimizer_state_bytes(optimizers[name])
            if step >= args.warmup:
                times[name].append(time.perf_counter() - start)
    results = {}
    for name, model in modes.items():
        results[name] = {
            "train": name,
            "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "optimizer_state_bytes": state[name],
            "step_ms": round(1000 * statistics.median(times[name]), 2),
        }
        print(json.dumps(results[name]))
    return results


def decode(modes: dict, args, device: torch.device, vocab: int) -> dict[str, dict]:
    from plmkit.generation import generate_ids

    prompt = torch.randint(0, vocab, (1, 16), generator=torch.Generator().manual_seed(2)).to(device)
    times: dict[str, list[float]] = {name: [] for name in modes}
    ids: dict[str, torch.Tensor] = {}
    for _ in range(args.repeats + 1):  # the first round warms up
        for name, model in modes.items():
            sync(device)
            start = time.perf_counter()
            ids[name] = generate_ids(model, prompt, max_new_tokens=args.new_tokens, eos_token_id=[])
            sync(device)
            times[name].append(time.perf_counter() - start)
    results = {}
    for name in modes:
        ms = 1000 * statistics.median(times[name][1:]) / args.new_tokens
        results[name] = {"decode": name, "ms_per_token": round(ms, 3)}
        if name.startswith(("prefix_", "folded")):  # the same prefix, however it is computed
            results[name]["same_ids_as_prefix"] = bool(torch.equal(ids[name], ids["prefix"]))
        print(json.dumps(results[name]))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="gpt2-small")
    parser.add_argument("--n-tokens", type=int, default=20)
    parser.add_argument("--hidden", type=int, default=512, help="prefix MLP width (Li & Liang: 512)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    import plmkit.peft as peft
    from plmkit.model import build_model
    from plmkit.peft.prefix import PrefixEncoder

    torch.manual_seed(0)
    base = build_model(args.preset, dropout=0.0).to(device)
    vocab = base.config.vocab_size
    prefix_options = dict(n_tokens=args.n_tokens, hidden=args.hidden)
    print(
        json.dumps(
            {
                "setup": True,
                "preset": args.preset,
                "device": str(device),
                "threads": args.threads,
                "batch": args.batch,
                "seq": args.seq,
                **prefix_options,
                "parameters": sum(p.numel() for p in base.parameters()),
            }
        )
    )

    def tuned(method: str, **options):
        return peft.apply(copy.deepcopy(base), method, **options).train()

    training = train(
        {
            "full": copy.deepcopy(base).train(),
            "lora": tuned("lora", r=8, target="attn.qkv"),
            "prefix": tuned("prefix", **prefix_options),
            "ptuning_v2": tuned("prefix", n_tokens=args.n_tokens, projection=False),
        },
        args,
        device,
        vocab,
    )

    prefix = tuned("prefix", **prefix_options).eval()
    recompute = copy.deepcopy(prefix)
    for module in recompute.modules():  # bypass the reuse of the MLP output: run it at every call
        if isinstance(module, PrefixEncoder):
            module.key_values_tensor = module._project
    decoding = decode(
        {
            "base": base.eval(),
            "prefix": prefix,
            "prefix_recompute": recompute,
            "folded": peft.fold(copy.deepcopy(prefix)),
        },
        args,
        device,
        vocab,
    )

    full, pre, v2 = training["full"], training["prefix"], training["ptuning_v2"]
    print(
        json.dumps(
            {
                "summary": True,
                "prefix_trainable_ratio": round(
                    pre["trainable_parameters"] / full["trainable_parameters"], 6
                ),
                "ptuning_v2_trainable_ratio": round(
                    v2["trainable_parameters"] / full["trainable_parameters"], 6
                ),
                "prefix_optimizer_state_ratio": round(
                    pre["optimizer_state_bytes"] / full["optimizer_state_bytes"], 6
                ),
                "ptuning_v2_optimizer_state_ratio": round(
                    v2["optimizer_state_bytes"] / full["optimizer_state_bytes"], 6
                ),
                "prefix_step_time_ratio": round(pre["step_ms"] / full["step_ms"], 3),
                "ptuning_v2_step_time_ratio": round(v2["step_ms"] / full["step_ms"], 3),
                "lora_step_time_ratio": round(training["lora"]["step_ms"] / full["step_ms"], 3),
                "decode_prefix_vs_base": round(
                    decoding["prefix"]["ms_per_token"] / decoding["base"]["ms_per_token"], 3
                ),
                "decode_recompute_vs_reused": round(
                    decoding["prefix_recompute"]["ms_per_token"] / decoding["prefix"]["ms_per_token"], 3
                ),
                "decode_folded_vs_reused": round(
                    decoding["folded"]["ms_per_token"] / decoding["prefix"]["ms_per_token"], 3
                ),
                "same_ids": all(decoding[m]["same_ids_as_prefix"] for m in ("prefix_recompute", "folded")),
            }
        )
    )


if __name__ == "__main__":
    main()
