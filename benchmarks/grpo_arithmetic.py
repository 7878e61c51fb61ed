"""Does GRPO raise the verifier accuracy on the synthetic addition task? Greedy accuracy on held-out problems
of a briefly SFT'd tiny GPT, before and after `plm grpo` with the arithmetic verifier as the only reward.

    python benchmarks/grpo_arithmetic.py [--sft-steps 500] [--grpo-steps 300] [--out benchmarks/results]
    python benchmarks/grpo_arithmetic.py --tiny        # seconds: the pipeline only

All on the CPU, all through plmkit's recipes (one engine):
1. data (plmkit.prompting.arithmetic, two-digit additions "49+97=" -> "146"): --dev held-out problems, then
   SFT rows and GRPO prompts drawn from the other problems; written to --work (default runs/arithmetic), the
   files recipes/grpo/arithmetic.yaml reads.
2. a byte-level BPE tokenizer with no merges (every digit one token) and `plm sft` of a tiny GPT from the
   gpt2-tiny preset at random init, on the SFT rows with a compact chat template (the prompt, then the
   answer and EOS), stopped early on purpose: some answers right, many wrong.
3. `plm grpo recipes/grpo/arithmetic.yaml` from that checkpoint (the template comes with its tokenizer):
   num_generations 8, the verifier's 0/1 reward, dapo loss, beta 0. The run's dev reward is the greedy
   accuracy on the held-out problems, logged before training (= the SFT model), every eval.every steps
   and at the end.
4. the control: the same SFT run continued for --control-steps more steps instead of GRPO (supervised
   answers instead of verifier rewards), its greedy accuracy on the same held-out problems.

Prints the accuracy curve and writes grpo-arithmetic-<date>.json (machine, load, wall times, the curve).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchkit, when run as a script

# the prompt, then the answer and EOS (trained): a few tokens per example instead of Alpaca's headers
TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}{{ m['content'] }}"
    "{% elif m['role'] == 'assistant' %}{% generation %}{{ m['content'] }}{{ eos_token }}{% endgeneration %}"
    "{% endif %}{% endfor %}"
)


def write_data(work: Path, n_sft: int, n_prompts: int, n_dev: int, seed: int) -> dict[str, Path]:
    from plmkit.prompting.arithmetic import problems

    dev = list(dict.fromkeys(problems(n_dev * 2, seed=seed + 2)))[:n_dev]
    held_out = set(dev)
    pool = [p for p in problems(4 * (n_sft + n_prompts), seed=seed) if p not in held_out]
    sft, prompts = pool[:n_sft], pool[n_sft : n_sft + n_prompts]
    work.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, rows in (
        ("sft", [{"prompt": p.prompt, "completion": p.answer} for p in sft]),
        ("prompts", [{"prompt": p.prompt, "answer": p.answer} for p in prompts]),
        ("dev", [{"prompt": p.prompt, "answer": p.answer} for p in dev]),
    ):
        files[name] = work / f"{name}.jsonl"
        files[name].write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return files


def write_tokenizer(work: Path, texts: list[str]) -> Path:
    from plmkit.tokenizer import Tokenizer

    folder = work / "tokenizer"
    tokenizer = Tokenizer.train(
        texts, kind="bpe", vocab_size=258, family="gpt2"
    )  # bytes + specials: no merges
    tokenizer.save(folder)
    return folder


def plm(argv: list[str]) -> dict:
    """`plm ARGV` in this process; its result (the last stdout line, JSON)."""
    import contextlib
    import io

    from plmkit.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main([str(a) for a in argv])
    text = out.getvalue()
    sys.stderr.write(text)
    if code != 0:
        raise SystemExit(f"plm {' '.join(map(str, argv[:2]))} failed with exit code {code}")
    return json.loads(text.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "arithmetic")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sft-steps", type=int, default=500)
    parser.add_argument("--grpo-steps", type=int, default=300)
    parser.add_argument("--grpo-lr", type=float, default=1e-4)
    parser.add_argument("--dev", type=int, default=500)
    parser.add_argument("--control-steps", type=int, default=500, help="SFT steps instead of GRPO (0: none)")
    parser.add_argument("--tiny", action="store_true", help="a few steps of everything: the pipeline only")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    if args.tiny:
        args.sft_steps, args.grpo_steps, args.dev, args.control_steps = 3, 3, 16, 2

    started = time.time()
    files = write_data(args.work, n_sft=8000, n_prompts=2000, n_dev=args.dev, seed=args.seed)
    texts = [json.loads(line)["prompt"] + json.loads(line)["completion"] for line in open(files["sft"])]
    tokenizer = write_tokenizer(args.work, texts)
    common = [
        "train.precision=fp32", "train.device=cpu", f"train.threads={args.threads}", "log.tensorboard=false",
        "log.plot=false", "--overwrite",
    ]  # fmt: skip
    sft_recipe = args.work / "sft.yaml"
    sft_recipe.write_text(json.dumps({"name": "arithmetic-sft", "chat_template": TEMPLATE}), encoding="utf-8")

    def sft(name: str, steps: int) -> dict:
        return plm([
            "sft", sft_recipe, f"name={name}", f"out_dir={args.work.parent / '{name}'}", f"tokenizer.path={tokenizer}",
            "model.preset=gpt2-tiny", "model.d_model=64", "model.n_layer=2", "model.n_head=4", "model.d_ff=256",
            "model.dropout=0.0", "model.max_positions=64", f"data.train={files['sft']}",
            "data.format=prompt_completion", "data.max_length=32", f"train.steps={steps}", "train.batch_size=64",
            "optim.lr=3e-3", "schedule.kind=constant", "eval.every=0", "checkpoint.every=0", "log.every=50",
            f"seed={args.seed}", *common,
        ])  # fmt: skip

    def grpo(name: str, checkpoint: str, steps: int) -> dict:
        return plm([
            "grpo", ROOT / "recipes" / "grpo" / "arithmetic.yaml", f"name={name}", f"init_from={checkpoint}",
            f"out_dir={args.work.parent / '{name}'}", f"data.train={files['prompts']}", f"data.dev={files['dev']}",
            f"train.steps={steps}", f"optim.lr={args.grpo_lr}", f"seed={args.seed}", *common,
        ])  # fmt: skip

    t0 = time.time()
    start = sft("arithmetic-sft", args.sft_steps)
    sft_seconds = time.time() - t0
    t0 = time.time()
    grpo_out = grpo("grpo-arithmetic", start["checkpoint"], args.grpo_steps)
    grpo_seconds = time.time() - t0
    control = {}
    if args.control_steps:  # the same start trained on with SFT instead (constant lr, the same data order:
        # N + M steps from scratch are N steps, then M more); its accuracy is a GRPO run's dev reward at step 0
        more = sft("arithmetic-sft-control", args.sft_steps + args.control_steps)
        control = {
            "control_sft_steps": args.sft_steps + args.control_steps,
            "control_accuracy": grpo("arithmetic-sft-control-eval", more["checkpoint"], 1)["dev_start"][
                "dev_reward"
            ],
        }
    run = Path(grpo_out["checkpoint"]).parents[1]
    rows = [json.loads(line) for line in open(run / "metrics.jsonl")]
    curve = [(r["step"], r["dev_reward"]) for r in rows if "dev_reward" in r]
    train_reward = [(r["step"], r["reward"]) for r in rows if "reward" in r]
    result = {
        "task": "two-digit addition, greedy accuracy on held-out problems (the arithmetic verifier)",
        "dev_problems": args.dev,
        "sft_steps": args.sft_steps,
        "grpo_steps": args.grpo_steps,
        "accuracy_start": curve[0][1],
        "accuracy_end": curve[-1][1],
        "accuracy_curve": curve,
        "train_reward_first_last": [train_reward[0], train_reward[-1]],
        **control,
        "sft_seconds": round(sft_seconds, 1),
        "grpo_seconds": round(grpo_seconds, 1),
        "wall_seconds": round(time.time() - started, 1),
        "threads": args.threads,
        "load_average": os.getloadavg(),
    }
    try:
        from benchkit.limits import machine

        result["machine"] = machine()
    except Exception as e:  # the figures stand without it
        result["machine"] = f"unavailable ({e})"
    print(json.dumps(result))
    if not args.tiny:
        args.out.mkdir(parents=True, exist_ok=True)
        from benchkit.report import result_path

        path = result_path(args.out, "grpo-arithmetic")
        path.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
        print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
