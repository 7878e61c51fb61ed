"""A GRPO step: plmkit's `plm grpo` step against trl 1.16's GRPOTrainer, side by side in one run.

    python benchmarks/bench_grpo.py [--threads 1] [--out benchmarks/results] [--quick]

One step = sample num_generations completions of each prompt (up to max_completion_length tokens at
temperature 1) -> reward them -> group advantages -> the loss forward / backward -> clip -> AdamW step:
plmkit.recipes.grpo.grpo_step on one side, one optimizer step of GRPOTrainer.train() on the other (driven
step by step from a callback, so that the two interleave; everything trl does between two steps counts).
Same model (a tiny LLaMA built by transformers, saved with save_pretrained, loaded by both), same
tokenizer, prompts, reward function, batch (prompts x num_generations completions), lengths, loss (dapo,
beta 0, num_iterations 1), AdamW settings and clipping; no evaluation, logging or checkpoints in the
timed steps.

Before timing (BENCHMARKING.md rule 1): the logits of the two loaded models agree (fp32, within 1e-4),
greedy decoding gives the same ids, and the GRPO loss of the same completions (and advantages) is the
same on both sides (plmkit's GrpoLoss vs GRPOTrainer._compute_loss). The sampled completions differ (two
random streams): their mean length is reported for both sides. Timing: interleaved rounds with rotating
order, contention measured (benchkit.rounds); the ratio is trl's seconds per step / plmkit's.

Writes one JSON line per comparison to stdout and grpo-<cpu>-<date>.json to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchkit, when run as a script

import torch  # noqa: E402

GOAL = 1.5  # the bar: a GRPO step >= 1.5x trl's


@dataclass(frozen=True)
class Setup:
    layers: int = 2
    d_model: int = 128
    heads: int = 4
    vocab: int = 1024
    prompts: int = 8  # prompts per step
    num_generations: int = 8  # completions per prompt: 64 per step
    max_completion_length: int = 64
    lr: float = 1e-5


def reward_len(completions, **_):
    """The benchmark's reward: a cheap function of the text with a spread (length in characters / 100)."""
    return [len(c) / 100 for c in completions]


# ---- the shared model, tokenizer and prompts -------------------------------------------------------------
def build_folder(folder: Path, s: Setup) -> tuple[Path, list[str]]:
    """A byte-level BPE tokenizer (plmkit's trainer, saved as a transformers tokenizer) and a tiny LLaMA
    of its vocabulary built by transformers (seed 0, every weight nudged), in one folder; the prompts."""
    from pydoc_data import topics

    import transformers as T
    from benchkit import models as M

    from plmkit.tokenizer import Tokenizer

    text = "\n".join(topics.topics[name] for name in sorted(topics.topics))[:200_000]
    tokenizer = Tokenizer.train([text], kind="bpe", vocab_size=s.vocab, family="gpt2")
    hf_tokenizer = T.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer.backend,
        eos_token=tokenizer.special_tokens.eos,
        pad_token=tokenizer.special_tokens.pad,
    )
    hf_tokenizer.save_pretrained(folder)
    config = M.hf_config(
        "llama",
        M.Shape(layers=s.layers, d_model=s.d_model, heads=s.heads, vocab=tokenizer.vocab_size, positions=512),
    )
    config.eos_token_id, config.pad_token_id, config.bos_token_id = tokenizer.eos_id, tokenizer.pad_id, None
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = T.LlamaForCausalLM(config)
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.02 * torch.randn(p.shape, generator=g))
    model.generation_config.eos_token_id = tokenizer.eos_id
    model.generation_config.pad_token_id = tokenizer.pad_id
    model.save_pretrained(folder)
    lines = [line.strip() for line in text.splitlines() if 60 <= len(line.strip()) <= 90]
    return folder, lines[:256]


# ---- plmkit ------------------------------------------------------------------------------------------------
def plmkit_run(folder: Path, prompts_file: Path, s: Setup, threads: int, work: Path):
    from plmkit.config import load_config
    from plmkit.recipes.grpo import build_grpo_run
    from plmkit.recipes.grpo_config import GrpoConfig
    from plmkit.train.distributed.base import Strategy

    overrides = [
        f"init_from={folder}", f"data.train={prompts_file}", "data.format=prompt", "chat_template=raw",
        "data.max_prompt_length=128", f"num_generations={s.num_generations}",
        f"train.batch_size={s.prompts * s.num_generations}", f"generation.max_new_tokens={s.max_completion_length}",
        f"rewards=[{{function: '{Path(__file__).resolve()}:reward_len'}}]", "grpo.loss_type=dapo", "grpo.beta=0.0",
        "grpo.epsilon_low=0.2", "grpo.epsilon_high=0.2", f"optim.lr={s.lr}", "optim.weight_decay=0.0",
        "optim.betas=[0.9, 0.999]", "schedule.kind=constant", "train.clip_grad=1.0", "train.precision=fp32",
        "train.device=cpu", f"train.threads={threads}", f"out_dir={work / 'plmkit'}",
    ]  # fmt: skip
    config = load_config(GrpoConfig, None, overrides)
    run = build_grpo_run(config, Strategy(), None)
    run.model.train()
    return run


# ---- trl ---------------------------------------------------------------------------------------------------
class StepGate:
    """A TrainerCallback that holds GRPOTrainer.train() (in its own thread) after each step until the
    benchmark asks for the next one: `step()` runs exactly one more optimizer step and returns."""

    def __init__(self) -> None:
        from transformers import TrainerCallback

        gate = self

        class Callback(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                if state.global_step == 0:
                    gate.go.acquire()

            def on_step_end(self, args, state, control, **kwargs):
                gate.done.release()
                gate.go.acquire()
                if gate.stop:
                    control.should_training_stop = True

        self.callback = Callback()
        self.go, self.done = threading.Semaphore(0), threading.Semaphore(0)
        self.stop, self.error = False, None

    def step(self) -> None:
        self.go.release()
        while not self.done.acquire(timeout=1.0):
            if self.error is not None:
                raise RuntimeError("trl's training thread failed") from self.error

    def close(self) -> None:
        self.stop = True
        self.go.release()


def trl_trainer(folder: Path, prompts: list[str], s: Setup, work: Path):
    import datasets
    import transformers as T
    from trl import GRPOConfig, GRPOTrainer

    model = T.AutoModelForCausalLM.from_pretrained(folder, attn_implementation="sdpa")
    tokenizer = T.AutoTokenizer.from_pretrained(folder)
    tokenizer.padding_side = "left"
    args = GRPOConfig(
        output_dir=str(work / "trl"), per_device_train_batch_size=s.prompts * s.num_generations,
        num_generations=s.num_generations, max_completion_length=s.max_completion_length,
        gradient_accumulation_steps=1, num_iterations=1, beta=0.0, loss_type="dapo", epsilon=0.2,
        learning_rate=s.lr, weight_decay=0.0, adam_beta1=0.9, adam_beta2=0.999, max_grad_norm=1.0,
        lr_scheduler_type="constant", max_steps=10**6, logging_steps=10**6, save_strategy="no", report_to="none",
        use_cpu=True, bf16=False, fp16=False, temperature=1.0, top_p=1.0, top_k=0, disable_tqdm=True,
        dataloader_num_workers=0, seed=0, log_completions=False,
    )  # fmt: skip
    dataset = datasets.Dataset.from_dict({"prompt": prompts})
    return GRPOTrainer(
        model=model, reward_funcs=reward_len, args=args, train_dataset=dataset, processing_class=tokenizer
    )


def start_trl(trainer) -> StepGate:
    gate = StepGate()
    trainer.add_callback(gate.callback)

    def train() -> None:
        try:
            trainer.train()
        except BaseException as e:  # reported by the next step()
            gate.error = e
            gate.done.release()

    threading.Thread(target=train, daemon=True).start()
    return gate


# ---- checks before timing -------------------------------------------------------------------------------
def check_models(run, trainer, prompts: list[str]) -> dict:
    """Logits within 1e-4 and the same greedy ids on a prompt."""
    from plmkit.generation import generate_ids
    from plmkit.weights import unwrap

    ours, theirs = unwrap(run.model), trainer.model
    ids = torch.tensor([run.tokenizer.encode(prompts[0])])
    with torch.no_grad():
        difference = float((ours(ids).logits - theirs(input_ids=ids).logits).abs().max())
        greedy_ours = generate_ids(ours, ids, max_new_tokens=16, eos_token_id=[])[0].tolist()
        out = theirs.generate(
            ids, max_new_tokens=16, min_new_tokens=16, do_sample=False, attention_mask=torch.ones_like(ids)
        )
        greedy_theirs = out[0, ids.shape[1] :].tolist()
    return {"logits_max_abs_difference": difference, "greedy_ids_equal": greedy_ours == greedy_theirs}


def check_loss(run, trainer) -> dict:
    """The GRPO loss of one sampled generation batch on both sides: plmkit's GrpoLoss on its right-padded
    rows, trl's _compute_loss on the same completions laid out as trl lays them out (left-padded prompts,
    right-padded completions), with the same advantages."""
    from plmkit.recipes.grpo_step import sample_generation_batch

    batch = sample_generation_batch(run, 10**6)  # a generation batch that the timed steps never draw
    t = batch.tensors
    loss_sum, count = run.loss({"model": run.model}, t)
    ours = float(loss_sum) / float(count)
    run.loss.step_metrics(run.strategy)
    pad = run.tokenizer.pad_id
    prompts, completions = [], []
    for row in range(t["input_ids"].shape[0]):
        real, response = t["attention_mask"][row].bool(), t["response_mask"][row].bool()
        prompts.append(t["input_ids"][row][real & ~response])
        completions.append(t["input_ids"][row][response])
    p_len, c_len = max(len(p) for p in prompts), max(len(c) for c in completions)
    prompt_ids = torch.full((len(prompts), p_len), pad)
    prompt_mask = torch.zeros_like(prompt_ids)
    completion_ids = torch.full((len(prompts), c_len), pad)
    completion_mask = torch.zeros_like(completion_ids)
    for i, (p, c) in enumerate(zip(prompts, completions, strict=True)):
        prompt_ids[i, p_len - len(p) :], prompt_mask[i, p_len - len(p) :] = p, 1
        completion_ids[i, : len(c)], completion_mask[i, : len(c)] = c, 1
    inputs = {
        "prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "completion_ids": completion_ids,
        "completion_mask": completion_mask, "advantages": t["advantages"],
        "num_items_in_batch": completion_mask.sum(),
    }  # fmt: skip
    trainer.current_gradient_accumulation_steps = 1
    with torch.no_grad():
        theirs = float(trainer._compute_loss(trainer.model, inputs))
    return {"loss_plmkit": ours, "loss_trl": theirs, "loss_abs_difference": abs(ours - theirs)}


def cpu_time_ratio(cpu: dict[str, list[float]], timed: dict, warmup: int) -> dict:
    """Median over the rounds of trl's CPU seconds per step / plmkit's (each round's calls after the
    warm-up calls, in the order the rounds ran them)."""
    import statistics

    calls = timed["calls_per_block"]
    position = {name: warmup for name in cpu}
    values = []
    for r in timed["rounds"]:
        mean = {}
        for name in r["order"]:
            chunk = cpu[name][position[name] : position[name] + calls[name]]
            position[name] += calls[name]
            mean[name] = sum(chunk) / len(chunk)
        values.append(mean["trl"] / mean["plmkit"])
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "rounds": len(values),
    }


# ---- main -------------------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--quick", action="store_true", help="fewer rounds (a look, not a figure)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-grpo-") as work:  # removed on SystemExit too
        run_benchmark(args, Path(work))


def run_benchmark(args: argparse.Namespace, work: Path) -> None:
    """The benchmark; the model folder, prompts and both sides' files go to `work` (removed by main)."""
    torch.set_num_threads(args.threads)
    import trl
    from benchkit import rounds as R
    from benchkit.limits import machine, slug
    from benchkit.report import result_path

    s = Setup()
    folder, prompts = build_folder(work / "model", s)
    prompts_file = work / "prompts.jsonl"
    prompts_file.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts), encoding="utf-8")
    run = plmkit_run(folder, prompts_file, s, args.threads, work)
    trainer = trl_trainer(folder, prompts, s, work)
    checks = {**check_models(run, trainer, prompts), **check_loss(run, trainer)}
    print(json.dumps({"checks": checks}), flush=True)
    ok = (
        checks["logits_max_abs_difference"] < 1e-4
        and checks["greedy_ids_equal"]
        and checks["loss_abs_difference"] < 1e-5
    )
    if not ok:
        raise SystemExit(f"the two sides disagree before timing: {checks}")

    from benchkit.contention import own_cpu_seconds

    from plmkit.recipes.grpo_step import grpo_step

    gate = start_trl(trainer)
    lengths = {"plmkit": [], "trl": []}
    cpu = {"plmkit": [], "trl": []}  # CPU seconds of this process per call (trl's thread runs alone)
    step = {"i": 0}

    def plmkit_step() -> None:
        before = own_cpu_seconds()
        _, metrics = grpo_step(run, step["i"])
        cpu["plmkit"].append(own_cpu_seconds() - before)
        step["i"] += 1
        lengths["plmkit"].append(metrics["completion_length"])

    def trl_step() -> None:
        before = own_cpu_seconds()
        gate.step()
        cpu["trl"].append(own_cpu_seconds() - before)
        logged = trainer._metrics["train"].get("completions/mean_length", [])
        if logged:
            lengths["trl"].append(logged[-1])

    plan = R.Plan(
        warmup=2, rounds=3 if args.quick else 5, max_rounds=4 if args.quick else 16, block_s=2.0, budget_s=900
    )
    timed = R.compare({"trl": trl_step, "plmkit": plmkit_step}, plan)
    gate.close()
    ratio = R.ratio(timed["rounds"], "trl", "plmkit")
    cpu_ratio = cpu_time_ratio(cpu, timed, plan.warmup)
    info = machine()
    row = {
        "bench": "grpo_step",
        "setup": asdict(s),
        "completions_per_step": s.prompts * s.num_generations,
        "seconds_per_step": {
            "trl": R.seconds(timed["rounds"], "trl"),
            "plmkit": R.seconds(timed["rounds"], "plmkit"),
        },
        "speedup": ratio,
        # the same rounds by this process's CPU time (1 thread): less sensitive to what other processes take
        "speedup_cpu_time": cpu_ratio,
        "goal": GOAL,
        "met": ratio["median"] is not None and ratio["median"] >= GOAL,
        "mean_completion_length": {k: sum(v) / len(v) if v else None for k, v in lengths.items()},
        "checks": checks,
        "trl": trl.__version__,
        "threads": args.threads,
        "machine": info,
        "rounds": timed["rounds"],
    }
    print(json.dumps({k: v for k, v in row.items() if k not in ("rounds", "machine")}), flush=True)
    if not args.quick:
        args.out.mkdir(parents=True, exist_ok=True)
        path = result_path(args.out, f"grpo-{slug(info['cpu']['model'])}")
        path.write_text(json.dumps(row, indent=1) + "\n", encoding="utf-8")
        print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
