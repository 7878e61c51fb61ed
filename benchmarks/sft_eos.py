"""Does supervised fine-tuning teach a small model to stop? The share of answers to held-out instructions
that end with EOS before the token limit, before and after `plm sft`, for a tokenizer whose pad differs from
its eos and for one whose pad IS its eos (a known failure elsewhere).

    python benchmarks/sft_eos.py [--lang zh] [--threads 2] [--out benchmarks/results]
    python benchmarks/sft_eos.py --tiny          # the test's size: seconds

The steps, all on the CPU and all through plmkit's own recipes (one engine):
1. base: a byte-level BPE tokenizer (gpt2 family: eos <|endoftext|>, pad <|pad|>) and a tiny GPT
   (d_model 256, 4 layers) pre-trained (`plm pretrain`, CLM) on the training rows' text, one document per row
   ("instruction / input / output"), each document ended by EOS as the pre-training store does. Its copy with
   pad == eos (tokenizer and model config) is the second base.
2. SFT (`plm sft`, chat_template plain: "### Instruction:" / "### Response:", each answer followed by EOS)
   on the first --rows alpaca rows, packed into blocks of data.max_length, labels by position.
3. greedy answers to the last --held-out rows' instructions (never trained on), --max-new-tokens at most:
   the share that ends with EOS before the limit ("empty": EOS as the first token), before (the base) and
   after (the SFT checkpoint, whose saved tokenizer renders the prompt with the template it was trained
   with). Teacher-forced on each held-out reference answer: the share where EOS is the model's first choice
   right after it, and its mean probability there: whether the model learned where an answer stops, apart
   from what greedy decoding of a tiny model does (it falls into repetition loops). The same answers are
   also decoded with CTRL's repetition penalty 1.3 and sampled as chat models ship (temperature 0.7, top_p
   0.9, seed 0): the goal is reported for greedy and for sampling apart.

A third arm reproduces the failure elsewhere on the pad == eos base: a collator that masks labels by token
id (labels = -100 where input_ids == pad_id, as transformers' DataCollatorForLanguageModeling does) also
masks every real EOS, so the model never learns to stop. plmkit masks padding by position.

Prints one JSON line per (arm, stage) and a summary (sample answers go to stderr); writes
sft-eos-<lang>-<date>.json with the machine, the load, the wall time of each phase and sample answers. On a
machine shared with other jobs, --threads 1 is much faster than 2 (two OpenMP threads that share their
cores with other processes wait on each other).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchkit, when run as a script
DATA = ROOT.parent / "shared" / "data" / "alpaca_bilingual"
GOAL = 0.9  # the bar: >= 90% of the answers end with EOS before the limit
REPETITION_PENALTY = 1.3  # the second decoding (CTRL's penalty on tokens already in the prompt or answer)
# the third: sampling as chat models ship it (Llama-2-chat's generation_config: temperature 0.6, top_p 0.9;
# Qwen's 0.7 / 0.8); seeded, so the figure is reproducible
SAMPLING = {"temperature": 0.7, "top_p": 0.9, "seed": 0}


@dataclass(frozen=True)
class Size:
    rows: int = 2000  # SFT (and pre-training) rows, from the start of the file
    held_out: int = 100  # the last rows of the file: the instructions answered before and after
    vocab: int = 2048
    d_model: int = 256
    n_layer: int = 4
    n_head: int = 4
    block: int = 128  # pre-training block size
    pretrain_steps: int = 800  # 0: the base is the model at its random initialisation
    sft_steps: int = 600
    batch: int = 16  # pre-training blocks per step; SFT packs half as many blocks of twice the length
    pretrain_lr: float = 3e-3
    sft_lr: float = 2e-3
    max_length: int = 256  # SFT tokens per conversation and per packed block
    max_new_tokens: int = 256  # 97% of the zh reference answers fit (84% fit in 128)
    max_positions: int = 768  # a long held-out prompt + max_new_tokens fits


TINY = Size(rows=96, held_out=6, vocab=300, d_model=32, n_layer=1, n_head=2, block=64,
            pretrain_steps=3, sft_steps=3, batch=4, max_length=128, max_new_tokens=12)  # fmt: skip

ARMS = ("pad!=eos", "pad==eos", "pad==eos-masked-by-id")  # the last: the failure elsewhere, reproduced


def common(threads: int) -> list[str]:
    return [
        "train.precision=fp32",
        "train.device=cpu",
        f"train.threads={threads}",
        "log.tensorboard=false",
        "log.plot=false",
        "checkpoint.every=0",
    ]


# ---- 1. the base ---------------------------------------------------------------------------------------
def document(row: dict) -> str:
    return "\n".join(part for part in (row["instruction"], row["input"], row["output"]) if part.strip())


def pretrain_base(rows: list[dict], size: Size, tmp: Path, threads: int) -> Path:
    from plmkit.config import load_config
    from plmkit.recipes.config import RecipeConfig
    from plmkit.recipes.pretrain import pretrain

    corpus = tmp / "pretrain.jsonl"
    corpus.write_text("".join(json.dumps({"text": document(r)}, ensure_ascii=False) + "\n" for r in rows))
    overrides = [
        "name=base", f"out_dir={tmp / 'base'}", "model.preset=gpt2-tiny", f"model.d_model={size.d_model}",
        f"model.n_layer={size.n_layer}", f"model.n_head={size.n_head}", f"model.d_ff={4 * size.d_model}",
        f"model.max_positions={size.max_positions}", "model.dropout=0.0",
        "tokenizer.kind=bpe", f"tokenizer.vocab_size={size.vocab}", "tokenizer.family=gpt2",
        f"data.sources=[{{path: {json.dumps(str(corpus))}}}]", f"data.block_size={size.block}",
        "data.validation_fraction=0", f"data.cache_dir={tmp / 'cache'}", "objective.name=clm",
        f"optim.lr={size.pretrain_lr}", "optim.weight_decay=0.0", "schedule.warmup_steps=10",
        f"train.steps={max(1, size.pretrain_steps)}", f"train.batch_size={size.batch}", "eval.every=0",
        f"log.every={max(1, size.pretrain_steps // 5)}", *common(threads),
    ]  # fmt: skip
    config = load_config(RecipeConfig, None, overrides)
    if size.pretrain_steps == 0:  # the untrained model with the tokenizer trained on the rows
        return random_base(config, tmp)
    return Path(pretrain(config, stream=sys.stderr)["checkpoint"])


def random_base(config, tmp: Path) -> Path:
    import torch

    from plmkit.io import save
    from plmkit.model import build_model
    from plmkit.recipes.common import build_model_config
    from plmkit.recipes.inputs import build_tokenizer

    tokenizer = build_tokenizer(config, tmp / "base")
    torch.manual_seed(0)
    return save(build_model(build_model_config(config, tokenizer)), tokenizer, tmp / "base" / "random")


def pad_is_eos_copy(base: Path, folder: Path) -> Path:
    """The base with pad == eos in its tokenizer and its model config."""
    from plmkit.io import load, save
    from plmkit.tokenizer import Tokenizer
    from plmkit.tokenizer.special import SpecialTokens

    model, tokenizer = load(base)
    eos = tokenizer.special_tokens.eos
    tokenizer = Tokenizer(tokenizer.backend, SpecialTokens(eos=eos, pad=eos))
    model.config = model.config.replace(pad_token_id=tokenizer.eos_id)
    save(model, tokenizer, folder)
    return folder


# ---- 2. SFT ----------------------------------------------------------------------------------------------
def collate_masking_pad_ids(original):
    """The failure elsewhere: labels = -100 wherever the token id is the pad id (every EOS when pad == eos)."""

    def collate(config, items, pad):
        batch = original(config, items, pad)
        batch["labels"] = batch["labels"].masked_fill(batch["input_ids"] == pad, -100)
        return batch

    return collate


def run_sft(arm: str, base: Path, data: Path, size: Size, tmp: Path, threads: int) -> dict:
    from plmkit.config import load_config
    from plmkit.recipes import sft as sft_recipe
    from plmkit.recipes.sft_config import SftConfig

    overrides = [
        f"name=sft-{ARMS.index(arm)}", f"out_dir={tmp / 'runs' / '{name}'}", f"init_from={base}",
        "chat_template=plain", f"data.train={data}", f"data.train_rows=0:{size.rows}", f"data.dev={data}",
        f"data.dev_rows=-{size.held_out}:", f"data.max_length={size.max_length}", "pack=true",
        "data.on_error=skip",  # 4 of the 3,000 rows have an empty output (lines 285, 1224, 1503, 1737)
        f"optim.lr={size.sft_lr}", "optim.weight_decay=0.0", "schedule.warmup_steps=10", f"train.steps={size.sft_steps}",
        f"train.batch_size={max(1, size.batch * size.block // size.max_length)}", "eval.every=0",
        f"log.every={max(1, size.sft_steps // 5)}", *common(threads),
    ]  # fmt: skip
    config = load_config(SftConfig, None, overrides)
    if arm.endswith("masked-by-id"):
        with mock.patch.object(sft_recipe, "collate", collate_masking_pad_ids(sft_recipe.collate)):
            return sft_recipe.sft(config, stream=sys.stderr)
    return sft_recipe.sft(config, stream=sys.stderr)


# ---- 3. answers ------------------------------------------------------------------------------------------
def answer_stats(checkpoint: Path, held_out: list[dict], size: Size, template: str | None) -> dict:
    """Greedy answers to the held-out instructions: the share that ends with EOS before the limit (and the
    same with a repetition penalty, which keeps a tiny model out of its loops); and, teacher-forced on each
    held-out reference answer, whether EOS is the model's first choice right after it (whether the model
    has learned where an answer stops, whatever its own answers look like)."""
    from plmkit.io import load
    from plmkit.prompting.chat import chat_prompt_ids
    from plmkit.prompting.instructions import to_messages

    model, tokenizer = load(checkpoint)
    prompts = [chat_prompt_ids(tokenizer, to_messages(r, "alpaca")[:-1], template) for r in held_out]
    greedy, answers = decode(model, tokenizer, prompts, size.max_new_tokens)
    penalized, _ = decode(
        model, tokenizer, prompts, size.max_new_tokens, repetition_penalty=REPETITION_PENALTY
    )
    sampled, sampled_answers = decode(
        model, tokenizer, prompts, size.max_new_tokens, do_sample=True, **SAMPLING
    )
    return {
        **greedy,
        "answers": len(held_out),
        **eos_after_reference(model, tokenizer, held_out, size, template),
        "repetition_penalty": {"penalty": REPETITION_PENALTY, **penalized},
        "sampled": {**SAMPLING, **sampled},
        "pad_id": tokenizer.pad_id,
        "eos_id": tokenizer.eos_id,
        "samples": [
            {"instruction": r["instruction"], "answer": a, "sampled_answer": b}
            for r, a, b in zip(held_out[:3], answers, sampled_answers)
        ],
    }


def decode(
    model, tokenizer, prompts: list[list[int]], max_new_tokens: int, **generation
) -> tuple[dict, list]:
    """({eos_rate, ended, empty, mean_new_tokens}, the answers' texts) of greedy decoding, or what the
    `generation` settings ask for (repetition_penalty, do_sample with temperature / top_p / seed)."""
    import torch

    from plmkit.generation import generate_ids

    input_ids, attention_mask = tokenizer.pad_batch(prompts, padding_side="left")
    with torch.no_grad():
        ids = generate_ids(model, input_ids, attention_mask, max_new_tokens=max_new_tokens, **generation)
    eos, lengths, ended, empty, answers = tokenizer.eos_id, [], 0, 0, []
    for row in ids.tolist():
        stop = row.index(eos) if eos in row else None  # with pad == eos, the padding after it is eos too
        ended += stop is not None
        empty += stop == 0  # EOS as the first token: "ended", but with no answer
        lengths.append(stop + 1 if stop is not None else len(row))
        answers.append(tokenizer.decode(row[:stop] if stop is not None else row))
    stats = {
        "eos_rate": ended / len(prompts),
        "ended": ended,
        "empty": empty,
        "mean_new_tokens": round(sum(lengths) / len(lengths), 1),
    }
    return stats, answers


def eos_after_reference(model, tokenizer, held_out: list[dict], size: Size, template: str | None) -> dict:
    """Teacher-forced on prompt + reference answer: EOS's rank-1 share and mean probability right after it."""
    import torch

    from plmkit.prompting.chat import ChatTemplate
    from plmkit.prompting.instructions import to_messages
    from plmkit.prompting.sft_data import sft_example

    chat = ChatTemplate.resolve(template, tokenizer)
    top, probability, counted = 0, 0.0, 0
    for row in held_out:
        messages = to_messages(row, "alpaca")
        ids = sft_example(tokenizer, chat, messages, size.max_positions)["input_ids"]
        if ids[-1] != tokenizer.eos_id:  # a reference too long for the model: its EOS was cut
            continue
        counted += 1
        with torch.no_grad():
            logits = model(torch.tensor([ids[:-1]]), compute_logits=True).logits[0, -1]
        top += int(logits.argmax()) == tokenizer.eos_id
        probability += float(logits.softmax(-1)[tokenizer.eos_id])
    return {
        "eos_first_after_reference": top / len(held_out),
        "eos_p_after_reference": round(probability / len(held_out), 4),
    }


# ---- the benchmark ---------------------------------------------------------------------------------------
def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lang", choices=("zh", "en"), default="zh")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tiny", action="store_true", help="the test's size (seconds)")
    parser.add_argument(
        "--arms", default=",".join(ARMS), help="a comma-separated subset of: " + ", ".join(ARMS)
    )
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    for f in dataclasses.fields(Size):  # every size, e.g. --sft-steps 300 --d-model 128
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=float if f.type == "float" else int)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    import torch
    from benchkit import contention
    from benchkit.limits import cpu_info

    torch.set_num_threads(args.threads)
    given = {
        f.name: getattr(args, f.name) for f in dataclasses.fields(Size) if getattr(args, f.name) is not None
    }
    size = dataclasses.replace(TINY if args.tiny else Size(), **given)
    arms = [arm for arm in ARMS if arm in {a.strip() for a in args.arms.split(",")}]
    data = DATA / f"alpaca_{args.lang}_first3k.jsonl"
    rows = [json.loads(line) for line in data.read_text(encoding="utf-8").splitlines() if line.strip()]
    train, held_out = rows[: size.rows], rows[len(rows) - size.held_out :]
    started, load_before, sample = time.time(), _loadavg(), contention.sample()
    phases: dict[str, float] = {}
    results: dict[str, dict] = {}

    def timed(name: str, work):
        t = time.time()
        value = work()
        phases[name] = round(time.time() - t, 1)
        return value

    def report(arm: str, stage: str, stats: dict) -> None:
        print(
            json.dumps({"arm": arm, "stage": stage, **{k: v for k, v in stats.items() if k != "samples"}}),
            flush=True,
        )
        for sample_answer in stats["samples"]:
            print(json.dumps(sample_answer, ensure_ascii=False), file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        base = timed("pretrain", lambda: pretrain_base(train, size, tmp, args.threads))
        bases = {"pad!=eos": base}
        if any(arm.startswith("pad==eos") for arm in arms):
            bases["pad==eos"] = bases[ARMS[2]] = pad_is_eos_copy(base, tmp / "base-pad-eos")
        before: dict[Path, dict] = {}  # per base: the pad==eos arms share theirs
        for arm in arms:
            if bases[arm] not in before:
                before[bases[arm]] = timed(
                    f"answers before ({arm})", lambda a=arm: answer_stats(bases[a], held_out, size, "plain")
                )
            report(arm, "before", before[bases[arm]])
            sft = timed(f"sft ({arm})", lambda a=arm: run_sft(a, bases[a], data, size, tmp, args.threads))
            after = timed(
                f"answers after ({arm})",
                lambda s=sft: answer_stats(Path(s["checkpoint"]), held_out, size, None),
            )
            report(arm, "after", after)
            results[arm] = {"before": before[bases[arm]], "after": after, "dev_loss": sft["dev"].get("loss")}
    shares = contention.shares(sample, contention.sample(), contention.cores())
    summary = {
        "goal": f">= {GOAL:.0%} of answers end with EOS before {size.max_new_tokens} new tokens",
        "met": {
            arm: results[arm]["after"]["eos_rate"] >= GOAL for arm in arms if not arm.endswith("masked-by-id")
        },
        "eos_rate": {arm: {s: results[arm][s]["eos_rate"] for s in ("before", "after")} for arm in arms},
        "eos_rate_repetition_penalty": {
            arm: {s: results[arm][s]["repetition_penalty"]["eos_rate"] for s in ("before", "after")}
            for arm in arms
        },
        "eos_rate_sampled": {
            arm: {s: results[arm][s]["sampled"]["eos_rate"] for s in ("before", "after")} for arm in arms
        },
        "met_sampled": {
            arm: results[arm]["after"]["sampled"]["eos_rate"] >= GOAL
            for arm in arms
            if not arm.endswith("masked-by-id")
        },
        "eos_first_after_reference": {
            arm: {s: results[arm][s]["eos_first_after_reference"] for s in ("before", "after")}
            for arm in arms
        },
        "wall_seconds": round(time.time() - started, 1),
    }
    print(json.dumps(summary), flush=True)
    machine = {
        "cpu": cpu_info()["model"], "threads": args.threads, "torch": torch.__version__,
        "load_average_before": load_before, "load_average_after": _loadavg(), **shares,
    }  # fmt: skip
    record = {"lang": args.lang, "size": dataclasses.asdict(size), "machine": machine, "phases_seconds": phases,
              "results": results, **summary}  # fmt: skip
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from benchkit.report import result_path

    result_path(out, f"sft-eos{'-tiny' if args.tiny else ''}-{args.lang}").write_text(
        json.dumps(record, indent=1, ensure_ascii=False) + "\n", encoding="utf-8"
    )


def _loadavg() -> list[float] | None:
    import os

    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None


if __name__ == "__main__":
    main()
