"""Chain-of-thought evaluation as an evaluate Task (GSM8K-format rows: question, answer), for evaluation
only: rows -> prompts -> generated paths -> extracted answers -> accuracy.

    task = CotTask(CotConfig(mode="few_shot", shots=8, exemplars="gsm8k/train.jsonl"), tokenizer)
    result = evaluate_split(task, model, split)     # plmkit.evaluate.tasks.run
    result.metrics   # accuracy_strict, accuracy_flexible (+ maj@k_*, greedy_accuracy_* when n_samples > 1)

A prediction is the answer of the one greedy path (n_samples == 1), or the majority vote of n sampled paths
(self-consistency). "strict" reads "The answer is N" / "#### N" (few-shot) or the first number of the
stage-2 answer (zero-shot: Kojima et al.'s cleansing); "flexible" reads the last number of the same text.
Accuracies are fractions (0..1), as the other tasks' accuracies.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from torch import nn

from plmkit.data.tasks import Row, TaskDataConfig, TaskSplit, read_split
from plmkit.errors import ConfigError
from plmkit.evaluate.tasks.base import Batch, Feature, Task, family_of
from plmkit.generation import GenerationConfig
from plmkit.prompting.answers import (
    extract_flexible,
    extract_strict,
    first_number,
    gold_answer,
    is_correct,
    maj_at_k,
    majority_vote,
)
from plmkit.prompting.cot import (
    ANSWER_TRIGGER,
    STOP,
    Exemplar,
    few_shot_prompt,
    gsm8k_rationale,
    sample_paths,
    sampling_config,
    two_stage,
    zero_shot_prompt,
)

RULES = ("strict", "flexible")
MODES = ("few_shot", "zero_shot")


@dataclass
class CotConfig:
    mode: Literal["few_shot", "zero_shot"] = "few_shot"
    shots: int = 8  # few_shot: exemplars in each prompt, the first `shots` rows of `exemplars`
    exemplars: str | None = None  # few_shot: a GSM8K-format file (question, answer), e.g. the train split
    n_samples: int = 1  # 1: one greedy path; > 1: self-consistency over that many sampled paths
    temperature: float = 0.7  # sampling (n_samples > 1); Wang et al. 2023 sample at 0.5-0.7
    top_k: int = 0  # sampling: 0 keeps every token
    top_p: float = 1.0
    max_new_tokens: int = 256  # the reasoning (few-shot: the whole completion)
    answer_max_new_tokens: int = 16  # zero_shot: stage 2, the answer after "Therefore, the answer ... is"
    stop: tuple[str, ...] = STOP  # the reasoning ends at the first of these
    greedy: bool = True  # n_samples > 1: also decode one greedy path and report greedy_accuracy_*
    seed: int = 0  # sampling: the batch starting at row r samples with seed + r
    batch_size: int = 8  # questions per evaluation batch; each generates n_samples paths at once

    def __post_init__(self) -> None:
        self.stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)
        if self.mode not in MODES:
            raise ConfigError(f"cot.mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        for key, low in (("shots", 0), ("n_samples", 1), ("max_new_tokens", 1), ("batch_size", 1)):
            if getattr(self, key) < low:
                raise ConfigError(f"cot.{key} must be >= {low}, got {getattr(self, key)}")
        if self.answer_max_new_tokens < 1:
            raise ConfigError(f"cot.answer_max_new_tokens must be >= 1, got {self.answer_max_new_tokens}")
        if self.n_samples > 1 and self.temperature <= 0:
            raise ConfigError(
                f"cot.temperature must be > 0 to sample {self.n_samples} paths, got {self.temperature}; "
                "set n_samples=1 for greedy decoding"
            )


@dataclass
class CotPath:
    text: str  # what was generated (zero_shot: reasoning + "\nTherefore, ... is" + answer)
    strict: str | None  # its answer under each rule (None: no number found)
    flexible: str | None


@dataclass
class CotPrediction:
    paths: list[CotPath]  # n_samples paths (the greedy one when n_samples == 1)
    greedy: CotPath | None = None  # n_samples > 1 with CotConfig.greedy

    def answer(self, rule: Literal["strict", "flexible"] = "flexible") -> str | None:
        """The majority vote of the paths' answers under `rule` (the one answer of a single path)."""
        return majority_vote([getattr(p, rule) for p in self.paths])


def maj_ks(n: int) -> list[int]:
    """The k of the maj@k metrics for n samples: 1, 2, 4, ... below n, and n."""
    return [k for k in (2**i for i in range(n.bit_length())) if k < n] + [n]


def cot_metrics(predictions: Sequence[CotPrediction], gold: Sequence[str]) -> dict[str, float]:
    """accuracy_{strict,flexible} of the voted answers; with several paths also maj@k_{rule} (the first k
    paths) and, where every prediction has one, greedy_accuracy_{rule}."""
    total = max(len(gold), 1)
    metrics: dict[str, float] = {}
    for rule in RULES:
        hits = sum(is_correct(p.answer(rule), g) for p, g in zip(predictions, gold, strict=True))
        metrics[f"accuracy_{rule}"] = hits / total
    n = min((len(p.paths) for p in predictions), default=1)
    if n > 1:
        for rule in RULES:
            answers = [[getattr(path, rule) for path in p.paths] for p in predictions]
            for k in maj_ks(n):
                metrics[f"maj@{k}_{rule}"] = maj_at_k(answers, gold, k)
        if all(p.greedy is not None for p in predictions):
            for rule in RULES:
                hits = sum(is_correct(getattr(p.greedy, rule), g) for p, g in zip(predictions, gold))
                metrics[f"greedy_accuracy_{rule}"] = hits / total
    return metrics


class CotTask(Task):
    """Chain-of-thought evaluation of a language model (see the module docstring); `exemplars`, when given,
    replace the file `config.exemplars` names."""

    name = "cot"
    head = "CausalLM"
    uses_labels = False
    main_metric = "accuracy_flexible"

    def __init__(
        self,
        config: CotConfig,
        tokenizer: Any,
        labels: Any = None,
        exemplars: Sequence[Exemplar] | None = None,
    ) -> None:
        super().__init__(config, tokenizer, labels)  # type: ignore[arg-type]
        self.exemplars: list[Exemplar] = []
        if config.mode == "few_shot" and config.shots > 0:
            self.exemplars = list(exemplars) if exemplars is not None else _read_exemplars(config)
            if len(self.exemplars) < config.shots:
                raise ConfigError(
                    f"cot.shots={config.shots} but only {len(self.exemplars)} exemplars were given; "
                    "lower shots or give more exemplars"
                )
            self.exemplars = self.exemplars[: config.shots]

    def prompt(self, question: str) -> str:
        if self.config.mode == "zero_shot":
            return zero_shot_prompt(question)
        return few_shot_prompt(self.exemplars, question)

    # ---- data --------------------------------------------------------------------------------------
    def columns(self):
        return ("question", "answer"), ("id",), ("question", "answer")

    def gold(self, split: TaskSplit) -> list[str]:
        return [gold_answer(str(row.values["answer"]), row.where) for row in split.rows]

    def features(self, split: TaskSplit) -> list[Feature]:
        self.gold(split)  # a row without "#### N" fails here, before any generation
        out = []
        for i, row in enumerate(split.rows):
            prompt = self.prompt(str(row.values["question"]))
            ids = self.tokenizer.encode(prompt, add_special_tokens=False)  # its length orders the batches
            out.append({"row": i, "input_ids": ids, "prompt": prompt})
        return out

    def collate(self, features: Sequence[Feature]) -> Batch:
        """The prompts as UTF-8 bytes (B, L) uint8 + their lengths (B,), so that the text survives the move to
        the device, and the rows (B,), whose first seeds the batch's sampling."""
        encoded = [f["prompt"].encode("utf-8") for f in features]
        data = torch.zeros((len(encoded), max(map(len, encoded), default=0)), dtype=torch.uint8)
        for i, raw in enumerate(encoded):
            data[i, : len(raw)] = torch.frombuffer(bytearray(raw), dtype=torch.uint8)
        return {
            "prompt_bytes": data,
            "prompt_lengths": torch.tensor([len(raw) for raw in encoded]),
            "row": torch.tensor([f["row"] for f in features]),
        }

    # ---- model -------------------------------------------------------------------------------------
    def check_model(self, model: nn.Module, source: str) -> None:
        family = family_of(model) or type(model).__name__  # under any wrapper (DDP, PEFT)
        if family not in ("causal", "prefix", "seq2seq"):
            raise ConfigError(
                f"task cot generates text, but {source} holds a {family} model; give a causal, prefix or "
                "seq2seq language model"
            )

    def new_head(self, base: nn.Module, source: str) -> nn.Module:
        raise ConfigError(_EVALUATION_ONLY)

    def loss(self, models: Mapping[str, nn.Module], batch: Batch) -> tuple[torch.Tensor, int]:
        raise ConfigError(_EVALUATION_ONLY)

    __call__ = loss

    # ---- evaluation --------------------------------------------------------------------------------
    def outputs(self, model: nn.Module, batch: Batch) -> list[CotPrediction]:
        lengths = batch["prompt_lengths"].tolist()
        prompts = [bytes(r[:n]).decode("utf-8") for r, n in zip(batch["prompt_bytes"].tolist(), lengths)]
        c = self.config
        config = sampling_config(
            c.n_samples,
            c.temperature,
            c.max_new_tokens,
            c.seed + int(batch["row"].min()),
            c.stop,
            top_k=c.top_k,
            top_p=c.top_p,
        )
        groups = self._paths(model, prompts, config, c.n_samples)
        greedy: list[CotPath | None] = [None] * len(prompts)
        if c.n_samples > 1 and c.greedy:  # the baseline self-consistency is compared with
            one = sampling_config(1, 1.0, c.max_new_tokens, None, c.stop)
            greedy = [group[0] for group in self._paths(model, prompts, one, 1)]
        return [CotPrediction(paths, g) for paths, g in zip(groups, greedy, strict=True)]

    def _paths(
        self, model: nn.Module, prompts: list[str], config: GenerationConfig, n: int
    ) -> list[list[CotPath]]:
        """n paths per prompt, each with its answers under both rules."""
        if self.config.mode == "few_shot":
            texts = sample_paths(model, self.tokenizer, prompts, config, n)
            return [[CotPath(t, extract_strict(t), extract_flexible(t)) for t in group] for group in texts]
        repeated = [p for p in prompts for _ in range(n)]
        pairs = two_stage(
            model,
            self.tokenizer,
            repeated,
            config,
            answer_max_new_tokens=self.config.answer_max_new_tokens,
            answer_stop=STOP,
        )
        paths = [
            CotPath(f"{r.rstrip()}\n{ANSWER_TRIGGER}{a}", first_number(a), extract_flexible(a))
            for r, a in pairs
        ]
        return [paths[i * n : (i + 1) * n] for i in range(len(prompts))]

    def predictions(self, split, features, outputs) -> list[CotPrediction]:
        return list(outputs)  # one feature per row, in row order

    def metrics(self, split: TaskSplit, predictions: Sequence[CotPrediction]) -> dict[str, float]:
        return cot_metrics(predictions, self.gold(split))

    def record(self, row: Row, prediction: CotPrediction) -> dict[str, Any]:
        return {
            "where": row.where,
            "prediction": prediction.answer("flexible"),
            "strict": prediction.answer("strict"),
            "gold": gold_answer(str(row.values["answer"]), row.where),
            "paths": [asdict(p) for p in prediction.paths],
            "greedy": asdict(prediction.greedy) if prediction.greedy is not None else None,
        }


_EVALUATION_ONLY = (
    "task cot evaluates only; train on rationales as causal-LM fine-tuning on the (prompt, target) pairs of "
    "plmkit.prompting.cot.rationale_text"
)


def _read_exemplars(config: CotConfig) -> list[Exemplar]:
    if not config.exemplars:
        raise ConfigError(
            f"cot.mode=few_shot with shots={config.shots} needs exemplars: set cot.exemplars to a "
            "GSM8K-format file (question, answer), e.g. the train split, or set shots=0"
        )
    split = read_split(
        TaskDataConfig(train=config.exemplars, train_rows=f":{config.shots}"),
        "train",
        required=("question", "answer"),
        texts=("question", "answer"),
    )
    return [
        (str(row.values["question"]), gsm8k_rationale(str(row.values["answer"]), row.where))
        for row in split.rows
    ]
