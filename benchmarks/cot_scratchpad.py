"""Chain of thought, measured (Nye et al. 2021, "Show your work: scratchpads"): on synthetic multi-step
arithmetic word problems, a small GPT trained on rationales against the same GPT trained on answers only,
from the same random initialisation, tokenizer, steps, batch and learning rate; then self-consistency
(Wang et al. 2023: maj@k of n sampled paths) against greedy decoding.

    python benchmarks/cot_scratchpad.py [--steps 1000] [--jobs 2] [--out benchmarks/results]
    python benchmarks/cot_scratchpad.py --work W --rescore 1000,1500 --temperatures 0.3,0.5,1.0
    python benchmarks/cot_scratchpad.py --work W --rescore 1000 --temperatures 0.3 --fresh-test 2000
    python benchmarks/cot_scratchpad.py --any-order --steps 2500 --batch-size 8 --test-problems 500
    python benchmarks/cot_scratchpad.py --tiny        # the pipeline in seconds (tests); no claim

A problem has 2 or 3 steps of + / - on numbers 1..9 (a count from 2..9):

    Q: Tom has 7 apples. He buys 5 more. Then he gives away 3. How many apples does he have now?
    A: 7 + 5 = 12. 12 - 3 = 9. The answer is 9.         (rationale arm)
    A: The answer is 9.                                 (answer-only arm)

--any-order: 3-step problems whose rationales apply the steps in an order drawn at random among those
that never go below zero ("7 - 3 = 4. 4 + 5 = 9." for the problem above with a third step): several valid
paths to one answer, the diversity self-consistency relies on (the default task has exactly one).

Both arms' (prompt, target) pairs come from plmkit.prompting.cot.rationale_text on a GSM8K-format answer
("7 + 5 = 12.\\n12 - 3 = 9.\\n#### 9"); one example is one document (a JSONL line). Training is the
pre-training recipe (plmkit.recipes.pretrain) with objective clm on that file: documents are packed into
blocks with an end-of-text token between them, and the loss covers every token, the question's too (an
assistant-only loss is not what the recipe does). At equal steps and batch the arms see equal tokens, so
the answer-only arm sees about 1.4x more problems (both see fewer than the training file holds). The two
arms train at the same time in two processes of one thread each (--jobs 2), or one after the other. Evaluation on held-out problems (none of their questions
is in the training file): greedy decoding and flexible extraction (the last number,
plmkit.prompting.answers) for both arms; n sampled paths at a temperature, maj@1/2/4/.../n (answers.maj_at_k)
for both arms, also at a second, lower temperature as a check. Prompts start with the end-of-text token, as
every training document does. Diagnostics of the rationales: arithmetic, operands copied from the question,
chaining (plmkit.prompting has no such thing: they are specific to these problems).

The rationale arm also saves --checkpoints along training; at each, maj@n against greedy on the same
problems with the paired sign test (self_consistency_along_training): where, i.e. at which accuracy,
voting helps. --rescore re-measures saved checkpoints of an earlier --work at other --temperatures without
training (cot-scratchpad-rescore-<date>.json); with --fresh-test N it scores N new problems, in neither the
run's training nor its test problems: a setting chosen on the test set is confirmed on data it never saw.

Writes cot-scratchpad-<date>.json (accuracies, maj@k, paired counts and sign test, settings, loss curves,
wall times, the load average; -2, -3, ... for a second run that day) and prints one JSON line per arm and
checkpoint and a summary line.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import re
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import permutations
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

NAMES = [("Tom", "he"), ("Ben", "he"), ("Sam", "he"), ("Jack", "he"), ("Leo", "he"), ("Max", "he"),
         ("Anna", "she"), ("Lily", "she"), ("Mia", "she"), ("Emma", "she"), ("Zoe", "she"), ("Eva", "she")]  # fmt: skip
ITEMS = ["apples", "pens", "stickers", "marbles", "cookies", "books", "coins", "cards", "shells", "stamps"]
ADD = ["{p} buys {n} more.", "{p} finds {n} more.", "{p} gets {n} more from a friend.", "{p} wins {n} more."]
SUB = ["{p} gives away {n}.", "{p} loses {n}.", "{p} sells {n}.", "{p} gives {n} to a friend."]
THEN = ["", "Then "]
EQUATION = re.compile(r"(\d+) ([+-]) (\d+) = (\d+)")


@dataclass
class Problem:
    question: str
    answer: str  # GSM8K format: one equation per line, then "#### N"
    gold: str


def make_problem(rng: random.Random, max_start: int, max_operand: int, any_order: bool = False) -> Problem:
    """A problem of 2 or 3 steps; the count never goes below zero. The rationale applies the steps in the
    story's order, or (any_order: always 3 steps) in an order drawn at random among those whose running
    count never goes below zero: several valid ways to the one answer, as self-consistency assumes."""
    name, pronoun = rng.choice(NAMES)
    item = rng.choice(ITEMS)
    start = total = rng.randint(2, max_start)
    sentences, steps = [f"{name} has {total} {item}."], []
    for step in range(3 if any_order else rng.choice((2, 3))):
        subtract = total > 1 and rng.random() < 0.5
        n = rng.randint(1, min(max_operand, total) if subtract else max_operand)
        template = rng.choice(SUB if subtract else ADD)
        then = rng.choice(THEN) if step else ""
        subject = pronoun if then else pronoun.capitalize()
        sentences.append(then + template.format(p=subject, n=n))
        steps.append(-n if subtract else n)
        total += steps[-1]
    sentences.append(f"How many {item} does {pronoun} have now?")
    if any_order:
        steps = list(rng.choice([order for order in permutations(steps) if never_negative(start, order)]))
    equations, total = [], start
    for change in steps:
        equations.append(f"{total} {'-' if change < 0 else '+'} {abs(change)} = {total + change}.")
        total += change
    return Problem(" ".join(sentences), "\n".join([*equations, f"#### {total}"]), str(total))


def never_negative(start: int, changes: Sequence[int]) -> bool:
    return all(start + sum(changes[: k + 1]) >= 0 for k in range(len(changes)))


def make_split(
    n_train: int, n_test: int, seed: int, max_start: int, max_operand: int, any_order: bool = False
) -> tuple[list, list]:
    """Training and held-out problems; no held-out question occurs in the training set."""
    rng = random.Random(seed)
    test: dict[str, Problem] = {}
    while len(test) < n_test:
        p = make_problem(rng, max_start, max_operand, any_order)
        test.setdefault(p.question, p)
    train = []
    while len(train) < n_train:
        p = make_problem(rng, max_start, max_operand, any_order)
        if p.question not in test:
            train.append(p)
    return train, list(test.values())


def fresh_problems(
    n: int, seen: Sequence[Problem], seed: int, max_start: int, max_operand: int, any_order: bool = False
) -> list[Problem]:
    """`n` more problems, none of whose questions is in `seen` (a run's training and test problems), from
    a generator of their own (seed + 1): a second held-out set, for a confirmation run (--fresh-test)."""
    rng = random.Random(seed + 1)
    taken = {p.question for p in seen}
    fresh: dict[str, Problem] = {}
    while len(fresh) < n:
        p = make_problem(rng, max_start, max_operand, any_order)
        if p.question not in taken:
            fresh.setdefault(p.question, p)
    return list(fresh.values())


def training_text(problem: Problem, with_rationale: bool) -> str:
    from plmkit.prompting.cot import rationale_text

    prompt, target = rationale_text(problem.question, problem.answer, with_rationale)
    return prompt + target


def write_corpus(path: Path, problems: Sequence[Problem], with_rationale: bool) -> None:
    with path.open("w", encoding="utf-8") as f:
        for p in problems:
            f.write(json.dumps({"text": training_text(p, with_rationale)}) + "\n")


# ---- model and training --------------------------------------------------------------------------------
def recipe(args: argparse.Namespace, tmp: Path, **fields: Any) -> Any:
    """The pre-training recipe both arms share (plmkit.recipes.config.RecipeConfig); `fields` on top."""
    from plmkit.config.convert import from_dict
    from plmkit.recipes.config import RecipeConfig

    data = {
        "seed": args.seed,
        "objective": {"name": "clm"},
        "data": {"block_size": args.block_size, "validation_fraction": 0, "cache_dir": str(tmp / "cache")},
        "optim": {"lr": args.lr, "weight_decay": 0.1, "betas": [0.9, 0.95]},
        "schedule": {"kind": "cosine", "warmup_steps": min(args.warmup, args.steps)},
        "train": {"steps": args.steps, "batch_size": args.batch_size, "precision": "fp32",
                  "threads": args.threads, "device": args.device},
        "eval": {"every": 0},
        # --checkpoints saved along training (self-consistency is measured at each: along_training)
        "checkpoint": {"every": args.steps // args.checkpoints if args.checkpoints else 0,
                       "keep_last": args.checkpoints + 1},
        "log": {"every": max(args.steps // 10, 1), "tensorboard": False, "plot": False},
        **fields,
    }  # fmt: skip
    return from_dict(RecipeConfig, data)


def save_initial_model(args: argparse.Namespace, tmp: Path, texts: list[str]) -> tuple[Path, int]:
    """One tokenizer (trained on both arms' texts) and one random initialisation, saved as the checkpoint
    both arms start from (init_from): the same weights and vocabulary by construction."""
    import torch

    import plmkit
    from plmkit.recipes.common import build_recipe_model
    from plmkit.tokenizer import Tokenizer

    tokenizer = Tokenizer.train(texts, "bpe", vocab_size=args.vocab_size)
    model_fields = {"preset": "gpt2-tiny", "n_layer": args.n_layer, "d_model": args.d_model,
                    "n_head": args.n_head, "d_ff": 4 * args.d_model, "dropout": 0.0,
                    "max_positions": args.block_size + 64}  # fmt: skip
    torch.manual_seed(args.seed)
    model = build_recipe_model(recipe(args, tmp, model=model_fields), tokenizer)
    plmkit.save(model, tokenizer, tmp / "init")
    return tmp / "init", sum(p.numel() for p in model.parameters())


def train_arm(args: argparse.Namespace, tmp: Path, name: str, corpus: Path, init: Path) -> tuple[Path, dict]:
    """The pre-training recipe on one arm's file, from the shared initial checkpoint."""
    from plmkit.recipes.pretrain import pretrain
    from plmkit.train.logging import read_metrics

    config = recipe(
        args,
        tmp,
        name=name,
        out_dir=str(tmp / "runs" / name),
        init_from=str(init),
        data={"sources": [{"path": str(corpus)}], "block_size": args.block_size,
              "validation_fraction": 0, "cache_dir": str(tmp / "cache")},
    )  # fmt: skip
    started = time.time()
    result = pretrain(config, stream=sys.stderr)
    result["train_seconds"] = round(time.time() - started, 3)
    losses = [r for r in read_metrics(Path(config.run_dir) / "metrics.jsonl") if "loss" in r]
    result["loss_curve"] = [{"step": r["step"], "loss": round(r["loss"], 4)} for r in losses]
    return Path(result["checkpoint"]), result


def train_arms(args: argparse.Namespace, tmp: Path, corpora: dict[str, Path], init: Path) -> dict[str, Any]:
    """{arm: (checkpoint, result)}: one arm after the other (jobs=1), or both at once in their own
    processes (jobs=2, one thread each: on a shared machine two processes get two shares)."""
    if args.jobs == 1:
        return {name: train_arm(args, tmp, name, corpus, init) for name, corpus in corpora.items()}
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=get_context("spawn")) as pool:
        futures = {
            name: pool.submit(train_arm, args, tmp, name, corpus, init) for name, corpus in corpora.items()
        }
        return {name: future.result() for name, future in futures.items()}


# ---- evaluation ----------------------------------------------------------------------------------------
def step_diagnostics(
    problems: Sequence[Problem], texts: Sequence[str], any_order: bool = False
) -> dict[str, Any]:
    """Where rationales go wrong. Each written equation "a +/- b = c" is checked against the problem's step
    at its place: arithmetic_right (c == a op b), operand_right (op and b are that step's: copied from the
    question; any_order: one of the steps not written yet), chained (a is the previous equation's c; the
    first: the starting count); step_count_right: the texts with as many equations as the problem has
    steps. Fractions; None without equations."""
    counts = {"arithmetic_right": 0, "operand_right": 0, "chained": 0}
    equations = right_count = 0
    for problem, text in zip(problems, texts, strict=True):
        steps = EQUATION.findall(problem.answer)
        written = EQUATION.findall(text)
        right_count += len(written) == len(steps)
        previous = steps[0][0] if steps else None
        unused = [step[1:3] for step in steps]
        for k, (a, op, b, c) in enumerate(written):
            equations += 1
            counts["arithmetic_right"] += int(a) + (int(b) if op == "+" else -int(b)) == int(c)
            if any_order and (op, b) in unused:
                unused.remove((op, b))
                counts["operand_right"] += 1
            elif not any_order:
                counts["operand_right"] += k < len(steps) and (op, b) == steps[k][1:3]
            counts["chained"] += a == previous
            previous = c
    fractions = {k: round(v / equations, 4) if equations else None for k, v in counts.items()}
    return {
        "equations": equations,
        **fractions,
        "step_count_right": round(right_count / max(len(texts), 1), 4),
    }


def sign_test(only_a: int, only_b: int) -> float:
    """Two-sided exact sign test (McNemar's exact test) on the discordant pairs: p of a split at least this
    uneven when either arm is as likely to be the one that is right."""
    n = only_a + only_b
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(only_a, only_b) + 1)) / 2**n
    return min(1.0, 2 * tail)


def self_consistency_maj(
    args, model, tokenizer, prompts, gold, temperature: float
) -> tuple[dict[str, float], list[bool]]:
    """(maj@1, 2, 4, ..., n of n paths sampled at `temperature` (plmkit.prompting.cot.self_consistency),
    whether each problem's majority of the n paths is right)."""
    from plmkit.prompting.answers import is_correct, maj_at_k, majority_vote
    from plmkit.prompting.cot import self_consistency

    sampled = self_consistency(
        model, tokenizer, prompts, n=args.n_samples, temperature=temperature,
        max_new_tokens=args.max_new_tokens, seed=args.seed, batch_size=args.eval_batch * args.n_samples,
    )  # fmt: skip
    ks = [k for k in (1, 2, 4, 8, 16, 32) if k <= args.n_samples]
    return {f"maj@{k}": maj_at_k(sampled, gold, k) for k in ks}, [
        is_correct(majority_vote(answers), g) for answers, g in zip(sampled, gold, strict=True)
    ]


def evaluate_arm(
    args: argparse.Namespace, checkpoint: Path, test: Sequence[Problem], check: bool = True
) -> dict[str, Any]:
    """Greedy accuracy (flexible and strict extraction), the rationales' step diagnostics and
    self-consistency maj@k on `test`; "greedy_hits" / "majority_hits": which problems greedy decoding /
    the majority of the n paths got right. check=False: not at --check-temperature."""
    import torch

    import plmkit
    from plmkit.generation import GenerationConfig
    from plmkit.prompting.answers import extract_flexible, extract_strict, is_correct
    from plmkit.prompting.cot import STOP, generate_batched, question_prompt

    model, tokenizer = plmkit.load(checkpoint, device=args.device if args.device != "auto" else "cpu")
    prefix = tokenizer.decode([tokenizer.eos_id], skip_special_tokens=False)  # each document follows one
    prompts = [prefix + question_prompt(p.question) for p in test]
    gold = [p.gold for p in test]
    started = time.time()
    with torch.inference_mode():
        greedy = GenerationConfig(max_new_tokens=args.max_new_tokens, stop=STOP)
        texts = generate_batched(model, tokenizer, prompts, greedy, args.eval_batch)
        greedy_seconds = time.time() - started
        started = time.time()
        majority, majority_hits = self_consistency_maj(
            args, model, tokenizer, prompts, gold, args.temperature
        )
        if check and args.check_temperature:
            at, _ = self_consistency_maj(args, model, tokenizer, prompts, gold, args.check_temperature)
            majority.update({f"{k}_T{args.check_temperature:g}": v for k, v in at.items()})
    hits = [is_correct(extract_flexible(t), g) for t, g in zip(texts, gold)]
    strict = [is_correct(extract_strict(t), g) for t, g in zip(texts, gold)]
    return {
        "greedy_accuracy_flexible": sum(hits) / len(gold),
        "greedy_accuracy_strict": sum(strict) / len(gold),
        **majority,
        "greedy_steps": step_diagnostics(test, texts, args.any_order),
        "greedy_examples": [{"question": p.question, "gold": p.gold, "output": t} for p, t in zip(test[:5], texts)],
        "greedy_seconds": round(greedy_seconds, 1),
        "sampling_seconds": round(time.time() - started, 1),
        "greedy_hits": hits,
        "majority_hits": majority_hits,
    }  # fmt: skip


def rounded(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()}


# ---- main ----------------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--tiny", action="store_true", help="seconds: a 1x32 model, 3 steps, 8 test problems (tests only)")
    add("--steps", type=int, default=1000)
    add("--batch-size", type=int, default=4, help="blocks per step")
    add("--block-size", type=int, default=256)
    add("--lr", type=float, default=3e-3)
    add("--warmup", type=int, default=50)
    add("--n-layer", type=int, default=4)
    add("--d-model", type=int, default=128)
    add("--n-head", type=int, default=4)
    add("--vocab-size", type=int, default=512)
    add("--train-problems", type=int, default=40000)
    add("--test-problems", type=int, default=250)
    add("--max-start", type=int, default=9, help="the starting count is 2..max-start")
    add("--max-operand", type=int, default=9, help="each step adds or takes 1..max-operand")
    add(
        "--any-order",
        action="store_true",
        help="3-step problems whose rationales apply the steps in a random valid order (several paths to one answer)",
    )
    add("--n-samples", type=int, default=8, help="self-consistency paths per problem")
    add("--temperature", type=float, default=0.7)
    add("--check-temperature", type=float, default=0.3, help="maj@k also at this temperature (0: not)")
    add("--max-new-tokens", type=int, default=48)
    add("--eval-batch", type=int, default=50, help="problems per generate call")
    add("--seed", type=int, default=0)
    add(
        "--checkpoints",
        type=int,
        default=5,
        help="checkpoints saved along training; self-consistency vs greedy is measured at each (0: the end only)",
    )
    add(
        "--rescore",
        default=None,
        metavar="STEPS",
        help="no training: the rationale checkpoints of an earlier run's --work at these steps (e.g. 1000,1500), "
        "self-consistency (--n-samples paths) vs greedy at each of --temperatures",
    )
    add("--temperatures", default="0.3,0.5,1.0", help="comma-separated, for --rescore")
    add(
        "--fresh-test",
        type=int,
        default=0,
        metavar="N",
        help="with --rescore: score N new problems instead of the run's test set, none of them in its "
        "training or test problems (a confirmation on data the choice of setting never saw)",
    )
    add("--threads", type=int, default=1, help="torch threads per training process")
    add(
        "--jobs",
        type=int,
        default=2,
        choices=(1, 2),
        help="1: train the arms one after the other; 2: at once",
    )
    add("--device", default="cpu", help="cpu | cuda | auto")
    add("--out", default=str(ROOT / "benchmarks" / "results"))
    add(
        "--work",
        default=None,
        help="keep the corpora and checkpoints in this folder (default: a temporary one)",
    )
    args = parser.parse_args(argv)
    if args.rescore and not args.work:
        parser.error("--rescore reads the checkpoints of an earlier run: give its --work folder")
    if not 0 <= args.checkpoints <= args.steps:
        parser.error(f"--checkpoints {args.checkpoints} must be between 0 and --steps {args.steps}")
    try:
        steps = [int(s) for s in args.rescore.split(",")] if args.rescore else []
        temperatures = [float(t) for t in args.temperatures.split(",")]
    except ValueError as e:
        parser.error(f"--rescore takes steps and --temperatures numbers, comma-separated ({e})")
    if args.fresh_test and not args.rescore:
        parser.error("--fresh-test scores saved checkpoints: give --rescore STEPS and --work")
    if args.fresh_test < 0:
        parser.error(
            f"--fresh-test {args.fresh_test}: give a number of problems >= 1 (0: the run's test set)"
        )
    if any(s < 1 for s in steps) or any(t <= 0 for t in temperatures):
        parser.error("--rescore steps must be >= 1 and --temperatures > 0 (greedy is measured anyway)")
    if args.tiny:
        args.steps, args.batch_size, args.block_size, args.warmup = 3, 4, 64, 1
        args.n_layer, args.d_model, args.n_head, args.vocab_size = 1, 32, 2, 300
        args.train_problems, args.test_problems, args.n_samples = 200, 8, 4
        args.max_new_tokens, args.eval_batch, args.threads, args.jobs = 24, 8, 1, 1
        args.checkpoints = 3  # one a step
    return args


def arm_report(result: dict[str, Any], metrics: dict[str, Any], tokens_per_problem: float) -> dict[str, Any]:
    curve = result["loss_curve"]
    return {
        "final_train_loss": curve[-1]["loss"] if curve else None,
        "tokens_per_problem": round(tokens_per_problem, 1),
        "problems_seen": round(result["tokens"] / tokens_per_problem),
        "train_seconds": result["train_seconds"],
        **rounded(metrics),
        "loss_curve": curve,
    }


def majority_vs_greedy(metrics: dict[str, Any], n: int) -> dict[str, Any]:
    """maj@n against greedy on the same problems: the difference and the paired sign test."""
    only_majority = sum(m and not g for m, g in zip(metrics["majority_hits"], metrics["greedy_hits"]))
    only_greedy = sum(g and not m for m, g in zip(metrics["majority_hits"], metrics["greedy_hits"]))
    return {
        "greedy": round(metrics["greedy_accuracy_flexible"], 4),
        f"maj@{n}": round(metrics[f"maj@{n}"], 4),
        "maj@1": round(metrics["maj@1"], 4),
        "majority_minus_greedy_points": round(100 * (metrics[f"maj@{n}"] - metrics["greedy_accuracy_flexible"]), 1),
        "only_majority_right": only_majority, "only_greedy_right": only_greedy,
        "sign_test_p": float(f"{sign_test(only_majority, only_greedy):.3g}"),
    }  # fmt: skip


def along_training(
    args: argparse.Namespace, final: Path, final_point: dict[str, Any], test: Sequence[Problem]
) -> list[dict[str, Any]]:
    """Self-consistency against greedy at each checkpoint the rationale arm saved (--checkpoints), the
    final one (`final`, measured already: `final_point`) last: where along training, i.e. at which
    accuracy, voting over sampled paths helps."""
    points = []
    for checkpoint in sorted(final.parent.glob("step-*")):
        step = int(checkpoint.name.split("-")[1])
        if checkpoint == final:
            points.append({"step": step, **final_point})
            continue
        point = {
            "step": step,
            **majority_vs_greedy(evaluate_arm(args, checkpoint, test, check=False), args.n_samples),
        }
        print(json.dumps({"arm": "rationale", **point}), flush=True)
        points.append(point)
    return points


def compare(report: dict[str, Any], hits: dict[str, list[bool]]) -> dict[str, Any]:
    """The two claims: rationale vs answer-only greedy (with the paired counts and the sign test), and the
    rationale arm's maj@n vs its greedy accuracy."""
    r, a = report["arms"]["rationale"], report["arms"]["answer_only"]
    only_r = sum(x and not y for x, y in zip(hits["rationale"], hits["answer_only"]))
    only_a = sum(y and not x for x, y in zip(hits["rationale"], hits["answer_only"]))
    n = max(int(key[4:]) for key in r if key.startswith("maj@") and "_T" not in key)
    return {
        "rationale_minus_answer_only_greedy_points": round(100 * (r["greedy_accuracy_flexible"] - a["greedy_accuracy_flexible"]), 1),
        "only_rationale_right": only_r, "only_answer_only_right": only_a,
        "sign_test_p": float(f"{sign_test(only_r, only_a):.3g}"),  # 3 significant digits
        f"rationale_maj@{n}_minus_greedy_points": round(100 * (r[f"maj@{n}"] - r["greedy_accuracy_flexible"]), 1),
        "rationale_wins": r["greedy_accuracy_flexible"] > a["greedy_accuracy_flexible"],
        "self_consistency_wins": r[f"maj@{n}"] > r["greedy_accuracy_flexible"],
        # the checkpoints where maj@n beats greedy beyond the noise (paired sign test, p < 0.05)
        "self_consistency_wins_at_steps": [
            p["step"] for p in report.get("self_consistency_along_training", [])
            if p["majority_minus_greedy_points"] > 0 and p["sign_test_p"] < 0.05
        ],
    }  # fmt: skip


def rescore(args: argparse.Namespace, test: Sequence[Problem]) -> dict[str, Any]:
    """Self-consistency vs greedy of saved rationale checkpoints at other temperatures (--rescore)."""
    folder = Path(args.work) / "runs" / "rationale" / "checkpoints"
    points = []
    for step in (int(s) for s in args.rescore.split(",")):
        checkpoint = folder / f"step-{step:08d}"
        if not checkpoint.is_dir():
            raise SystemExit(f"error: no checkpoint {checkpoint}; --rescore takes the steps saved there")
        for temperature in (float(t) for t in args.temperatures.split(",")):
            args.temperature = temperature
            metrics = evaluate_arm(args, checkpoint, test, check=False)
            point = {"step": step, "temperature": temperature, **majority_vs_greedy(metrics, args.n_samples)}
            point.update({k: round(v, 4) for k, v in metrics.items() if k.startswith("maj@")})
            print(json.dumps(point), flush=True)
            points.append(point)
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "work", "temperature")}
    return {"rescore": points, "settings": settings}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    import torch

    from plmkit.tokenizer import Tokenizer

    started = time.time()
    load_before = os.getloadavg()
    train, test = make_split(
        args.train_problems, args.test_problems, args.seed, args.max_start, args.max_operand, args.any_order
    )
    if args.rescore:
        from benchkit.report import result_path

        if args.fresh_test:
            test = fresh_problems(
                args.fresh_test, [*train, *test], args.seed, args.max_start, args.max_operand, args.any_order
            )
        report = rescore(args, test)
        report["test_problems_scored"] = len(test)
        path = result_path(Path(args.out), f"cot-scratchpad-rescore{'-tiny' if args.tiny else ''}")
        path.write_text(json.dumps(report, indent=1) + "\n")
        return report
    arms = {"rationale": True, "answer_only": False}
    report: dict[str, Any] = {"arms": {}}
    hits: dict[str, list[bool]] = {}
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(args.work or folder)
        tmp.mkdir(parents=True, exist_ok=True)
        corpora = {name: tmp / f"{name}.jsonl" for name in arms}
        for name, with_rationale in arms.items():
            write_corpus(corpora[name], train, with_rationale)
        init, n_params = save_initial_model(
            args, tmp, [training_text(p, r) for p in train for r in arms.values()]
        )
        setup_seconds = time.time() - started
        trained = train_arms(args, tmp, corpora, init)
        tokenizer = Tokenizer.load(init)
        for name, with_rationale in arms.items():
            checkpoint, result = trained[name]
            metrics = evaluate_arm(args, checkpoint, test)
            if name == "rationale":
                report["self_consistency_final"] = majority_vs_greedy(metrics, args.n_samples)
                if args.checkpoints:
                    report["self_consistency_along_training"] = along_training(
                        args, checkpoint, report["self_consistency_final"], test
                    )
            hits[name] = metrics.pop("greedy_hits")
            metrics.pop("majority_hits")
            docs = [training_text(p, with_rationale) for p in train[:2000]]
            tokens_per_problem = sum(len(tokenizer.encode(d)) + 1 for d in docs) / len(docs)  # + its eos
            report["arms"][name] = arm_report(result, metrics, tokens_per_problem)
            short = {
                k: v for k, v in report["arms"][name].items() if k not in ("greedy_examples", "loss_curve")
            }
            print(json.dumps({"arm": name, **short}), flush=True)
    summary = compare(report, hits)
    print(json.dumps(summary), flush=True)
    report.update(summary)
    report["settings"] = {
        **{k: v for k, v in vars(args).items() if k not in ("out", "work")},
        "parameters": n_params, "train_problems_unique": len({p.question for p in train}),
        "objective": "clm (loss on every token, question included), packed blocks, eos between problems",
        "extraction": "flexible (last number); strict = 'The answer is N'",
    }  # fmt: skip
    report["machine"] = {
        "platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
        "load_average_at_start": [round(x, 2) for x in load_before],
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
    }  # fmt: skip
    report["wall_seconds"] = {"setup": round(setup_seconds, 1), "total": round(time.time() - started, 1)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from benchkit.report import result_path

    result_path(out, f"cot-scratchpad{'-tiny' if args.tiny else ''}").write_text(
        json.dumps(report, indent=1) + "\n"
    )
    return report


if __name__ == "__main__":
    main()
