"""In-context learning as an evaluation task (the evaluate Task protocol, no training), accuracy against the
number of shots, and order sensitivity.

    task = IclTask(config, tokenizer, train, family="causal")      # labels: the train split's
    result = evaluate_split(task, model, dev)                       # accuracy, macro_f1, predicted_<label>
    curve = accuracy_vs_shots(model, tokenizer, train, dev, [0, 1, 4, 8], config=config)
    plot_accuracy_vs_shots(curve, "icl.png")
    order_sensitivity(model, tokenizer, train, dev, config, permutations=6)   # mean / std / min / max

With config.calibrate the prediction is the argmax of the calibrated label distribution and the metrics
also give the uncalibrated ones (`uncalibrated_accuracy`, `uncalibrated_predicted_<label>`, ...): the
predicted-label distribution before and after calibration.
"""

from __future__ import annotations

import dataclasses
import math
import random
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from plmkit.data.sources import SkipReport
from plmkit.data.tasks import Row, TaskSplit, label_name
from plmkit.errors import ConfigError, DataError, ShapeError
from plmkit.evaluate.metrics import classification_metrics
from plmkit.evaluate.tasks.base import Batch, Feature, Task, pad_rows
from plmkit.evaluate.tasks.config import TaskConfig
from plmkit.evaluate.tasks.run import TaskResult, evaluate_split
from plmkit.prompting.calibration import calibrate, label_distribution, label_probs
from plmkit.prompting.icl import (
    Embeddings,
    Encoder,
    IclConfig,
    build_prompts,
    check_shots,
    content_free_probs,
    embed,
    encode_prompt,
    family_of,
    label_vocab,
    label_word_ids,
    scores_of_ids,
    train_rows,
)

SCORING_FAMILIES = ("causal", "prefix", "seq2seq")  # the families continuation_logprobs scores


@dataclass
class IclPrediction:
    label: int  # the prediction: argmax of `calibrated` with config.calibrate, else of `probs`
    uncalibrated: int  # argmax of `probs`
    probs: list[float]  # (L,) softmax over the label words' mean log-probs
    calibrated: list[float] | None = None  # (L,) calibrate(probs, p_cf)


class IclTask(Task):
    """Rows text / label; one feature per row: its k-shot prompt. Evaluation only."""

    name = "icl"
    head = "CausalLM"  # or a PrefixLM / Seq2SeqLM: any LM that scores continuations (check_model)
    main_metric = "accuracy"

    def __init__(
        self,
        icl: IclConfig,
        tokenizer: Any,
        train: TaskSplit | Sequence[Row],
        family: str = "causal",
        config: TaskConfig | None = None,
        encoder: Encoder | None = None,
        train_embeddings: torch.Tensor | None = None,
        permutation: Sequence[int] | None = None,
    ) -> None:
        self.rows = train_rows(train)
        super().__init__(config or TaskConfig(), tokenizer, label_vocab(icl, self.rows))
        if family not in SCORING_FAMILIES:
            raise ConfigError(
                f"in-context learning scores label words with a causal, prefix or seq2seq LM, not a {family} one"
            )
        check_shots(icl, self.rows)
        self.icl, self.family, self.encoder, self.permutation = icl, family, encoder, permutation
        self.train_embeddings = train_embeddings
        if icl.uses_embeddings() and train_embeddings is None:
            if encoder is None:
                raise ConfigError(
                    f"selection={icl.selection} order={icl.order} compares sentence embeddings; give "
                    "encoder=(model, tokenizer) (e.g. all-MiniLM-L6-v2) or train_embeddings"
                )
            self.train_embeddings = embed(encoder, [str(r.values["text"]) for r in self.rows])  # once
        self.words = label_word_ids(icl, tokenizer, self.labels)
        self._p_cf: dict[tuple[int, tuple[int, ...]], torch.Tensor] = {}

    def columns(self):
        return ("text", "label"), ("id",), ("text",)

    def features(self, split: TaskSplit, query_embeddings: torch.Tensor | None = None) -> list[Feature]:
        queries = [str(r.values["text"]) for r in split.rows]
        embeddings = None
        if self.icl.uses_embeddings():
            if query_embeddings is None:
                if self.encoder is None:
                    raise ConfigError(
                        "the queries need sentence embeddings; give query_embeddings or an encoder"
                    )
                query_embeddings = embed(self.encoder, queries)
            embeddings = (self.train_embeddings, query_embeddings)
        prompts = build_prompts(
            self.icl, self.rows, queries, embeddings=embeddings, permutation=self.permutation
        )
        return [
            {
                "row": i,
                "input_ids": encode_prompt(self.tokenizer, p.text, self.family),
                "demonstrations": p.demonstrations,
                "prompt": p.text,
            }
            for i, p in enumerate(prompts)
        ]

    def collate(self, features: Sequence[Feature]) -> Batch:
        pad = self.tokenizer.pad_id if self.tokenizer.pad_id is not None else 0
        return {
            "input_ids": pad_rows([f["input_ids"] for f in features], pad),  # (B, T)
            "lengths": torch.tensor([len(f["input_ids"]) for f in features]),  # (B,)
            "demonstrations": torch.tensor([f["demonstrations"] for f in features], dtype=torch.long).view(
                len(features), self.icl.shots
            ),  # (B, k)
        }

    def check_model(self, model: nn.Module, source: str) -> None:
        if family_of(model) != self.family:
            raise ConfigError(
                f"{source} is a {family_of(model)} model but the task's prompts were encoded for a {self.family} "
                f"one; build IclTask with family={family_of(model)!r}"
            )

    def new_head(self, base: nn.Module, source: str) -> nn.Module:
        raise ConfigError(
            "in-context learning evaluates a language model as it is; it has no head to fine-tune"
        )

    def loss(self, models, batch):
        raise ConfigError(
            "in-context learning does not train; evaluate with evaluate_split or accuracy_vs_shots"
        )

    __call__ = loss

    def outputs(self, model: nn.Module, batch: Batch) -> list[Any]:
        self.check_model(model, "the model")
        prompts = [ids[:n].tolist() for ids, n in zip(batch["input_ids"], batch["lengths"].tolist())]
        probs = label_probs(scores_of_ids(model, prompts, self.words, self.config.batch_size))  # (B, L)
        out = []
        for b, demos in enumerate(batch["demonstrations"].tolist()):
            p_cf = self._content_free(model, tuple(demos)) if self.icl.calibrate else None
            out.append((probs[b], p_cf))
        return out

    def _content_free(self, model: nn.Module, demos: tuple[int, ...]) -> torch.Tensor:
        """p_cf of one set of demonstrations, computed once per model and set."""
        key = (id(model), demos)
        if key not in self._p_cf:
            self._p_cf[key] = content_free_probs(
                model, self.tokenizer, self.icl, self.rows, demos, self.labels, self.config.batch_size
            )
        return self._p_cf[key]

    def predictions(self, split, features, outputs) -> list[IclPrediction]:
        out = []
        for probs, p_cf in outputs:
            calibrated = calibrate(probs, p_cf) if p_cf is not None else None
            chosen = calibrated if calibrated is not None else probs
            out.append(
                IclPrediction(
                    label=int(chosen.argmax()),
                    uncalibrated=int(probs.argmax()),
                    probs=probs.tolist(),
                    calibrated=calibrated.tolist() if calibrated is not None else None,
                )
            )
        return out

    def metrics(self, split: TaskSplit, predictions: Sequence[IclPrediction]) -> dict[str, float]:
        gold = [self.labels.encode(r.values["label"], r.where) for r in split.rows]
        names = self.labels.names
        kinds = [("", [p.label for p in predictions])]
        if self.icl.calibrate:
            kinds.append(("uncalibrated_", [p.uncalibrated for p in predictions]))
        metrics: dict[str, float] = {}
        for prefix, predicted in kinds:
            for key, value in classification_metrics(predicted, gold).items():
                metrics[prefix + key] = value
            for name, share in label_distribution(predicted, names).items():
                metrics[f"{prefix}predicted_{name}"] = share
        return metrics

    def record(self, row: Row, prediction: IclPrediction) -> dict[str, Any]:
        names = self.labels.names
        record = {
            "where": row.where,
            "prediction": names[prediction.label],
            "label": label_name(row.values["label"]),
            "probs": dict(zip(names, prediction.probs)),
        }
        if prediction.calibrated is not None:
            record["calibrated"] = dict(zip(names, prediction.calibrated))
            record["uncalibrated"] = names[prediction.uncalibrated]
        return record


# ---- experiments -------------------------------------------------------------------------------------
def _split(rows: TaskSplit | Sequence[Row], name: str) -> TaskSplit:
    if isinstance(rows, TaskSplit):
        return rows
    rows = list(rows)
    if not rows:
        raise DataError(f"the {name} split has no rows; give at least one")
    return TaskSplit(name, rows[0].where.rsplit(":", 1)[0], rows, SkipReport())


def _embeddings(
    config: IclConfig,
    train: Sequence[Row],
    dev: TaskSplit,
    encoder: Encoder | None,
    embeddings: Embeddings | None,
) -> Embeddings | None:
    """(train, dev) sentence embeddings, computed once, when some shot count needs them."""
    if (
        embeddings is not None
        or not dataclasses.replace(config, shots=max(config.shots, 1)).uses_embeddings()
    ):
        return embeddings
    if encoder is None:
        raise ConfigError(
            f"selection={config.selection} order={config.order} compares sentence embeddings; give "
            "encoder=(model, tokenizer) (e.g. all-MiniLM-L6-v2) or embeddings=(train, dev)"
        )
    return embed(encoder, [str(r.values["text"]) for r in train]), embed(
        encoder, [str(r.values["text"]) for r in dev.rows]
    )


def evaluate_icl(
    model: nn.Module,
    tokenizer: Any,
    train: TaskSplit | Sequence[Row],
    dev: TaskSplit | Sequence[Row],
    config: IclConfig,
    encoder: Encoder | None = None,
    embeddings: Embeddings | None = None,
    permutation: Sequence[int] | None = None,
    batch_size: int = 16,
) -> TaskResult:
    """Metrics and per-row predictions of `model` prompted with `config` on `dev` (an IclTask through
    evaluate_split). `embeddings`: (train (N, C), dev (Q, C)) instead of an encoder."""
    dev = _split(dev, "dev")
    train_vectors, dev_vectors = embeddings if embeddings is not None else (None, None)
    task = IclTask(
        config,
        tokenizer,
        train,
        family_of(model),
        TaskConfig(batch_size=batch_size),
        encoder=encoder,
        train_embeddings=train_vectors,
        permutation=permutation,
    )
    return evaluate_split(task, model, dev, task.features(dev, dev_vectors))


def accuracy_vs_shots(
    model: nn.Module,
    tokenizer: Any,
    train: TaskSplit | Sequence[Row],
    dev: TaskSplit | Sequence[Row],
    shots: Sequence[int] = (0, 1, 4, 8),
    *,
    config: IclConfig,
    encoder: Encoder | None = None,
    embeddings: Embeddings | None = None,
    batch_size: int = 16,
) -> dict[str, list]:
    """{"shots", "accuracy", "macro_f1", "metrics" (each run's dict)} (+ "uncalibrated_accuracy" with
    config.calibrate), one entry per shot count, every other setting from `config`."""
    rows, dev = train_rows(train), _split(dev, "dev")
    for k in shots:
        check_shots(config, rows, k)  # before any scoring
    embeddings = _embeddings(config, rows, dev, encoder, embeddings)
    results: dict[str, list] = {"shots": [], "accuracy": [], "macro_f1": [], "metrics": []}
    for k in shots:
        metrics = evaluate_icl(
            model,
            tokenizer,
            rows,
            dev,
            dataclasses.replace(config, shots=k),
            None,
            embeddings,
            None,
            batch_size,
        ).metrics
        results["shots"].append(k)
        results["metrics"].append(metrics)
        for key in ("accuracy", "macro_f1", "uncalibrated_accuracy"):
            if key in metrics:
                results.setdefault(key, []).append(metrics[key])
    return results


def plot_accuracy_vs_shots(
    results: dict[str, list],
    path: str | Path,
    references: dict[str, Sequence[float]] | None = None,
    title: str | None = None,
) -> Path | None:
    """The accuracy-vs-shots PNG at `path` (the uncalibrated curve too when present; `references`: more
    curves by name, one value per shot count, dotted, e.g. chance); None, with a warning, when matplotlib
    is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        warnings.warn("matplotlib is not installed, so no accuracy-vs-shots plot; pip install 'plmkit[plot]'")
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    shots = results["shots"]
    if "uncalibrated_accuracy" in results:
        ax.plot(shots, results["uncalibrated_accuracy"], "s--", label="uncalibrated")
        ax.plot(shots, results["accuracy"], "o-", label="calibrated")
        ax.legend()
    else:
        ax.plot(shots, results["accuracy"], "o-", label="accuracy")
    for name, values in (references or {}).items():
        if len(values) != len(shots):
            raise ShapeError(f"reference {name!r} has {len(values)} values for {len(shots)} shot counts")
        ax.plot(shots, list(values), ":", label=name)
    if references:
        ax.legend()
    if title:
        ax.set_title(title)
    ax.set_xticks(shots)
    ax.set_xlabel("shots (demonstrations in the prompt)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    path = Path(path)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def order_sensitivity(
    model: nn.Module,
    tokenizer: Any,
    train: TaskSplit | Sequence[Row],
    dev: TaskSplit | Sequence[Row],
    config: IclConfig,
    permutations: int = 5,
    encoder: Encoder | None = None,
    embeddings: Embeddings | None = None,
    batch_size: int = 16,
) -> dict[str, Any]:
    """Accuracy over `permutations` orders of the same k demonstrations: the order config gives first,
    then distinct seeded permutations of it. {"mean", "std" (population), "min", "max", "accuracies",
    "orders"}."""
    k, rows, dev = config.shots, train_rows(train), _split(dev, "dev")
    if not 1 <= permutations <= math.factorial(k):
        raise ConfigError(
            f"permutations={permutations}, but {k} demonstrations have {math.factorial(k)} orders; give 1..{math.factorial(k)}"
        )
    check_shots(config, rows)
    rng = random.Random(config.seed)
    orders = [tuple(range(k))]
    while len(orders) < permutations:
        candidate = tuple(rng.sample(range(k), k))
        if candidate not in orders:
            orders.append(candidate)
    embeddings = _embeddings(config, rows, dev, encoder, embeddings)
    accuracies = [
        evaluate_icl(model, tokenizer, rows, dev, config, None, embeddings, order, batch_size).metrics[
            "accuracy"
        ]
        for order in orders
    ]
    values = torch.tensor(accuracies, dtype=torch.float64)
    return {
        "mean": float(values.mean()),
        "std": float(values.std(unbiased=False)),
        "min": float(values.min()),
        "max": float(values.max()),
        "accuracies": accuracies,
        "orders": [list(o) for o in orders],
    }
