"""In-context learning, measured: a small causal LM pre-trained here on sequences whose item -> label
mapping is drawn fresh for every sequence (so no mapping can be learnt in the weights: labels assigned per
sequence, as Chan et al. 2022, "Data distributional properties drive emergent in-context learning"), then
evaluated on mappings it never saw, with k = 0, 1, 2, 4, 8, 16 demonstrations.

    python benchmarks/icl_synthetic.py [--steps 8000] [--out benchmarks/results]   # 20-30 minutes, 1 thread
    python benchmarks/icl_synthetic.py --tiny        # the pipeline in seconds (tests); no claim

The world: `classes` classes of `exemplars` item words each (pronounceable nonsense words, "bap", "dek",
...; one per class by default), and `labels` label words (" red", " blue", ...). A sequence (one training
document) draws a number of classes, uniformly from `min_ways` to `ways`, and gives them distinct label
words at random (its mapping), then `pairs` lines "<item> <label>", each an exemplar of one of its classes:

    dek blue
    mov red
    dek blue         <- the label of dek is only known from this sequence's earlier lines
    ...

With more than one exemplar per class, an item's class is the same in every sequence (learnable in the
weights) while its label is not. A mapping is the set of (class, label) pairs of a sequence. The evaluation
episodes (always `ways` classes) are drawn first; a training sequence that shows one of their mappings, or
a part of one of two classes or more, is redrawn (counted). An episode is a mapping, 16 demonstrations and
a query item; shots=k uses its first k demonstrations (the curves are paired across k). The prompt is built
by plmkit.prompting.icl (template "{text} {label_word}\n": the k demonstrations, then the query item) and
the label words are scored by icl.label_word_scores (generation.scoring.continuation_logprobs): the
prediction is the likeliest of the `labels` words.

Why sequences with fewer classes than labels (min_ways 2 of 4 by default). Predicting a label from an
earlier line needs two attention layers (an induction head: find the earlier line of the query's item, copy
the token after it; Olsson et al. 2022). When every label appears in every sequence (min_ways = ways =
labels), copying a label seen in the context pays nothing until the item match works too, and the label
loss stays at chance: 8,000 steps of such sequences learnt nothing. With 2 or 3 classes, copying any label
of the context already pays, and the match is learnt on top of it (the staged path; Reddy 2023 describes
the same plateau). The evaluation stays at `ways` classes.

Bursty sequences (optional): a share `repeat` of the training sequences repeats its first half of the
lines (the same demonstrations again, in the same order; still one mapping). At a fixed offset, that
copying can be learnt by position alone; the earlier runs with repeat 0.5 and 4 classes per sequence are in
the README. The held-out episodes never repeat.

Training is `plm pretrain` (the CLI, in a subprocess) with objective clm on the generated JSONL file, a
llama-tiny (rotary positions) of 2 layers. Each sequence is 3 tokens a line and the end-of-text token
(checked), and the block size is that length: one sequence per block, none split or joined by packing; a
prompt starts with its first demonstration, as a block does.

References beside the measured accuracy, per k: chance (1 / labels) and the ideal in-context learner that
knows the classes: right when the query's class is among the demonstrations, else a uniform guess among the
labels no demonstrated class holds. The accuracy is also split by what the context holds: the query item
itself, only another exemplar of its class, or nothing of its class.

Writes icl-synthetic-<date>.json (accuracy per k with the references and the split, settings, the loss
curve, wall times) and icl-synthetic-<date>.png (accuracy vs k).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
LABEL_WORDS = ["red", "blue", "green", "gold", "pink", "gray", "brown", "black"]
TEMPLATE = "{text} {label_word}\n"
SHOTS = (0, 1, 2, 4, 8, 16)


@dataclass(frozen=True)
class World:
    items: list[list[str]]  # [class][exemplar] -> item word
    labels: list[str]  # label words (no leading space)

    def class_of(self) -> dict[str, int]:
        return {word: c for c, words in enumerate(self.items) for word in words}


@dataclass
class Episode:
    mapping: tuple[tuple[int, int], ...]  # sorted (class, label index) pairs
    demonstrations: list[tuple[str, str]]  # (item, label word), the most shots needed
    query: str
    answer: str


def make_world(classes: int, exemplars: int, labels: int, seed: int) -> World:
    """Distinct consonant-vowel-consonant item words, grouped into classes at random."""
    consonants, vowels = "bdfgklmnprstvz", "aeiou"
    words = sorted({a + v + b for a in consonants for v in vowels for b in consonants} - set(LABEL_WORDS))
    rng = random.Random(seed)
    chosen = rng.sample(words, classes * exemplars)
    items = [chosen[c * exemplars : (c + 1) * exemplars] for c in range(classes)]
    if labels > len(LABEL_WORDS):
        raise SystemExit(f"--labels is at most {len(LABEL_WORDS)}")
    return World(items, LABEL_WORDS[:labels])


def draw_mapping(rng: random.Random, world: World, ways: int) -> tuple[tuple[int, int], ...]:
    """`ways` classes with distinct labels (a random injection of the classes into the label words)."""
    classes = rng.sample(range(len(world.items)), ways)
    labels = rng.sample(range(len(world.labels)), ways)
    return tuple(sorted(zip(classes, labels)))


def draw_pairs(rng: random.Random, world: World, mapping, n: int) -> list[tuple[str, str]]:
    """n (item, label word) lines: a class of the mapping and one of its exemplars, each uniformly."""
    out = []
    for _ in range(n):
        c, label = rng.choice(mapping)
        out.append((rng.choice(world.items[c]), world.labels[label]))
    return out


def document(pairs: Sequence[tuple[str, str]]) -> str:
    return "".join(TEMPLATE.format(text=item, label_word=label) for item, label in pairs)


def training_ways(args: argparse.Namespace) -> list[int]:
    """The class counts a training sequence draws from, uniformly: --min-ways .. --ways."""
    return list(range(args.min_ways, args.ways + 1))


def held_out_parts(episodes: Sequence[Episode]) -> set[tuple[tuple[int, int], ...]]:
    """Every held-out mapping and each part of it of two classes or more."""
    return {part for e in episodes for n in range(2, len(e.mapping) + 1) for part in itertools.combinations(e.mapping, n)}  # fmt: skip


def shown_mapping(world: World, pairs: Sequence[tuple[str, str]]) -> tuple[tuple[int, int], ...]:
    """The (class, label index) pairs that a sequence's lines show."""
    class_of, label_index = world.class_of(), {w: i for i, w in enumerate(world.labels)}
    return tuple(sorted({(class_of[item], label_index[label]) for item, label in pairs}))


def make_data(args: argparse.Namespace, world: World) -> tuple[list[str], list[Episode], int]:
    """(training documents, evaluation episodes, training sequences redrawn because they showed a held-out
    mapping or a part of one of two classes or more). A share `repeat` of the documents repeats its first
    half of the lines (module docstring)."""
    rng = random.Random(args.seed)
    episodes = []
    for _ in range(args.episodes):
        mapping = draw_mapping(rng, world, args.ways)
        *demos, (query, answer) = draw_pairs(rng, world, mapping, max(SHOTS) + 1)
        episodes.append(Episode(mapping, demos, query, answer))
    held_out = held_out_parts(episodes)
    documents, redrawn = [], 0
    while len(documents) < args.documents:
        mapping = draw_mapping(rng, world, rng.choice(training_ways(args)))
        pairs = draw_pairs(rng, world, mapping, args.pairs)
        if rng.random() < args.repeat:
            half = args.pairs // 2
            pairs = pairs[:half] * 2 + pairs[2 * half :]
        if shown_mapping(world, pairs) in held_out:
            redrawn += 1
            continue
        documents.append(document(pairs))
    return documents, episodes, redrawn


# ---- training --------------------------------------------------------------------------------------
def block_size(args: argparse.Namespace) -> int:
    """One sequence per block: `pairs` lines of 3 tokens (item, label, newline) and the end-of-text token
    (checked after training: check_single_tokens), so that packing never splits or joins sequences."""
    return 3 * args.pairs + 1


def recipe(args: argparse.Namespace, work: Path, corpus: Path) -> dict[str, Any]:
    return {
        "name": "icl-synthetic",
        "out_dir": str(work / "run"),
        "seed": args.seed,
        "model": {"preset": args.preset, "n_layer": args.n_layer, "d_model": args.d_model,
                  "n_head": args.n_head, "dropout": 0.0, "max_positions": block_size(args),
                  **({"n_kv_head": args.n_head} if args.preset.startswith("llama") else {})},
        "tokenizer": {"kind": "bpe", "vocab_size": args.vocab_size},
        "data": {"sources": [{"path": str(corpus)}], "block_size": block_size(args),
                 "validation_fraction": 0.02, "cache_dir": str(work / "cache")},
        "objective": {"name": "clm"},
        "optim": {"lr": args.lr, "weight_decay": args.weight_decay, "betas": [0.9, 0.95]},
        "schedule": {"kind": "cosine", "warmup_steps": min(args.warmup, args.steps)},
        "train": {"steps": args.steps, "batch_size": args.batch_size, "precision": "fp32",
                  "threads": args.threads, "device": "cpu"},
        "eval": {"every": max(args.steps // 4, 1), "batches": 10},
        "checkpoint": {"every": 0, "keep_last": 1},
        "log": {"every": max(args.steps // 20, 1), "tensorboard": False, "plot": False},
    }  # fmt: skip


def write_documents(path: Path, documents: Sequence[str]) -> Path:
    with path.open("w", encoding="utf-8") as f:
        for text in documents:
            f.write(json.dumps({"text": text}) + "\n")
    return path


def run_pretrain(recipe: dict[str, Any], work: Path, threads: int) -> tuple[Path, dict]:
    """`plm pretrain RECIPE.yaml` (the CLI, in a subprocess, `recipe` written to work/); (the final
    checkpoint, {"train_seconds", "loss_curve", "val_loss"})."""
    import yaml

    from plmkit.train.checkpoint import latest_checkpoint
    from plmkit.train.logging import read_metrics

    path = work / f"{recipe['name']}.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    started = time.time()
    done = subprocess.run(
        [sys.executable, "-m", "plmkit", "pretrain", str(path)],
        env=env,
        cwd=work,
        capture_output=True,
        text=True,
    )
    seconds = time.time() - started
    (work / "pretrain.log").write_text(done.stdout + done.stderr)
    if done.returncode:
        raise SystemExit(f"plm pretrain failed ({done.returncode}):\n{done.stderr[-3000:]}")
    run_dir = Path(recipe["out_dir"])
    rows = read_metrics(run_dir / "metrics.jsonl")
    curve = [{"step": r["step"], "loss": round(r["loss"], 4)} for r in rows if "loss" in r]
    val = [{"step": r["step"], "val_loss": round(r["val_loss"], 4)} for r in rows if "val_loss" in r]
    checkpoint = latest_checkpoint(run_dir)
    assert checkpoint is not None, "plm pretrain wrote no checkpoint"
    return checkpoint, {"train_seconds": round(seconds, 1), "loss_curve": curve, "val_loss": val}


# ---- evaluation ------------------------------------------------------------------------------------
def check_single_tokens(tokenizer: Any, world: World, documents: Sequence[str], pairs: int) -> None:
    """Each item (at a line start), label word (after a space) and newline must be one token, so that a
    label's score is one log-prob and every sequence 3 tokens a line (one sequence per block)."""
    split = [w for c in world.items for w in c if len(tokenizer.encode(w)) != 1]
    split += [w for w in world.labels if len(tokenizer.encode(" " + w)) != 1]
    split += [repr(t) for t in ("\n",) if len(tokenizer.encode(t)) != 1]
    if split:
        raise SystemExit(f"these words are split by the trained tokenizer: {split[:8]}; raise --vocab-size")
    lengths = {len(tokenizer.encode(d)) for d in documents[:500]}
    if lengths != {3 * pairs}:
        raise SystemExit(
            f"sequences of {sorted(lengths)} tokens, expected {3 * pairs}: blocks would not align"
        )


def ideal_accuracy(episode: Episode, world: World, k: int) -> float:
    """The expected accuracy of a learner that knows the classes (see the module docstring)."""
    class_of, demos = world.class_of(), episode.demonstrations[:k]
    seen = {class_of[item]: label for item, label in demos}
    if class_of[episode.query] in seen:
        return 1.0
    return 1.0 / (len(world.labels) - len(set(seen.values())))


def context_kind(episode: Episode, world: World, k: int) -> str:
    class_of, demos = world.class_of(), episode.demonstrations[:k]
    if any(item == episode.query for item, _ in demos):
        return "query_item_in_context"
    if any(class_of[item] == class_of[episode.query] for item, _ in demos):
        return "only_other_exemplar_in_context"
    return "class_not_in_context"


def evaluate(args, model, tokenizer, world: World, episodes: Sequence[Episode]) -> dict[str, Any]:
    """Accuracy per shot count through plmkit.prompting.icl's prompts and label-word scores."""
    from plmkit.data.tasks import LabelVocab, Row
    from plmkit.prompting.icl import IclConfig, build_prompt, label_word_scores

    config = IclConfig(template=TEMPLATE, label_words={w: w for w in world.labels})
    labels = LabelVocab(list(world.labels))
    out: dict[str, Any] = {"shots": list(SHOTS), "accuracy": [], "ideal": [], "chance": [], "by_context": []}
    for k in SHOTS:
        prompts = []
        for e, episode in enumerate(episodes):
            rows = [
                Row({"text": item, "label": label}, f"episode {e} demonstration {j}")
                for j, (item, label) in enumerate(episode.demonstrations)
            ]
            prompts.append(build_prompt(config, rows, episode.query, range(k)))
        scores = label_word_scores(model, tokenizer, prompts, config, labels, args.eval_batch)  # (E, L)
        predicted = scores.argmax(-1).tolist()
        right = [labels.names[p] == e.answer for p, e in zip(predicted, episodes, strict=True)]
        by_kind: dict[str, list[bool]] = {}
        for episode, hit in zip(episodes, right, strict=True):
            by_kind.setdefault(context_kind(episode, world, k), []).append(hit)
        out["accuracy"].append(round(sum(right) / len(right), 4))
        out["ideal"].append(round(sum(ideal_accuracy(e, world, k) for e in episodes) / len(episodes), 4))
        out["chance"].append(round(1 / len(world.labels), 4))
        out["by_context"].append(
            {kind: {"episodes": len(h), "accuracy": round(sum(h) / len(h), 4)} for kind, h in sorted(by_kind.items())}
        )  # fmt: skip
        if k == 4:
            out["example_prompt"] = prompts[0]
    return out


def plot(results: dict[str, Any], path: Path) -> Path | None:
    from plmkit.prompting.icl_task import plot_accuracy_vs_shots

    references = {"ideal in-context learner": results["ideal"], "chance": results["chance"]}
    return plot_accuracy_vs_shots(
        results, path, references=references, title="held-out mappings (synthetic, Chan et al. 2022)"
    )


# ---- main ------------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--tiny", action="store_true", help="seconds: a 1x32 model, 5 steps, 24 episodes (tests only)")
    add("--classes", type=int, default=32)
    add("--exemplars", type=int, default=1, help="item words per class")
    add("--labels", type=int, default=4, help="label words")
    add("--ways", type=int, default=4, help="classes per sequence (each its own label)")
    add(
        "--min-ways",
        type=int,
        default=2,
        help="training sequences draw min-ways..ways classes (evaluation: ways)",
    )
    add("--pairs", type=int, default=21, help="item-label lines per training sequence (3 tokens each)")
    add("--repeat", type=float, default=0.0, help="share of sequences that repeat their first half")
    add("--documents", type=int, default=60000, help="training sequences")
    add("--episodes", type=int, default=500, help="held-out evaluation episodes")
    add("--steps", type=int, default=8000)
    add("--batch-size", type=int, default=32, help="sequences per step")
    add("--lr", type=float, default=3e-3)
    add("--warmup", type=int, default=50)
    add("--weight-decay", type=float, default=0.1)
    add("--preset", default="llama-tiny", help="model preset (rotary positions: llama-tiny)")
    add("--n-layer", type=int, default=2)
    add("--d-model", type=int, default=128)
    add("--n-head", type=int, default=4)
    add("--vocab-size", type=int, default=512, help="at most: the corpus has fewer pieces (a warning)")
    add("--eval-batch", type=int, default=64)
    add("--seed", type=int, default=0)
    add("--threads", type=int, default=1)
    add("--out", default=str(ROOT / "benchmarks" / "results"))
    add("--work", default=None, help="keep the data and the run in this folder (default: a temporary one)")
    args = parser.parse_args(argv)
    if not 2 <= args.min_ways <= args.ways:
        parser.error(f"--min-ways {args.min_ways} must be between 2 and --ways {args.ways}")
    if args.tiny:
        args.steps, args.batch_size, args.warmup = 5, 4, 1
        args.n_layer, args.d_model, args.n_head = 1, 32, 2
        args.documents, args.episodes, args.eval_batch = 300, 24, 32
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    import torch

    import plmkit

    started = time.time()
    load_before = os.getloadavg()
    world = make_world(args.classes, args.exemplars, args.labels, args.seed)
    documents, episodes, redrawn = make_data(args, world)
    with tempfile.TemporaryDirectory() as folder:
        work = Path(args.work or folder)
        work.mkdir(parents=True, exist_ok=True)
        corpus = write_documents(work / "sequences.jsonl", documents)
        checkpoint, training = run_pretrain(recipe(args, work, corpus), work, args.threads)
        model, tokenizer = plmkit.load(checkpoint)
        check_single_tokens(tokenizer, world, documents, args.pairs)
        eval_started = time.time()
        with torch.inference_mode():
            results = evaluate(args, model, tokenizer, world, episodes)
        eval_seconds = time.time() - eval_started
        n_params = sum(p.numel() for p in model.parameters())
    print(json.dumps({k: results[k] for k in ("shots", "accuracy", "ideal", "chance")}), flush=True)
    accuracy = results["accuracy"]
    report: dict[str, Any] = {
        **results,
        "rises_with_shots": all(b >= a for a, b in itertools.pairwise(accuracy)) and accuracy[-1] > accuracy[0],
        "accuracy_16_minus_0_points": round(100 * (accuracy[-1] - accuracy[0]), 1),
        "training": training,
        "settings": {
            **{k: v for k, v in vars(args).items() if k not in ("out", "work")},
            "parameters": n_params, "template": TEMPLATE, "labels_words": world.labels,
            "training_mappings_redrawn_as_held_out": redrawn,
            "held_out_mappings": len({e.mapping for e in episodes}),
            "objective": "clm on every token (items too), packed blocks, eos between sequences",
        },
        "machine": {
            "platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
            "load_average_at_start": [round(x, 2) for x in load_before],
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        },
        "wall_seconds": {"train": training["train_seconds"], "evaluate": round(eval_seconds, 1),
                         "total": round(time.time() - started, 1)},
    }  # fmt: skip
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from benchkit.report import output_stem

    stem = output_stem(out, f"icl-synthetic{'-tiny' if args.tiny else ''}")
    picture = plot(results, stem.with_suffix(".png"))
    report["png"] = picture.name if picture else None
    stem.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    print(
        json.dumps({"rises_with_shots": report["rises_with_shots"], "wall_seconds": report["wall_seconds"]})
    )
    return report


if __name__ == "__main__":
    main()
