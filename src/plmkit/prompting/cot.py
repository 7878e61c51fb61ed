"""Chain of thought: few-shot CoT prompts (Wei et al. 2022), zero-shot CoT in two stages (Kojima et al.
2022), self-consistency (Wang et al. 2023), and the training pairs of the rationale experiment.

    few_shot_prompt(exemplars_from_rows(train_rows[:8]), question)   -> "Q: ...\\nA: ... The answer is 72.\\n\\nQ: {question}\\nA:"
    zero_shot_cot(model, tokenizer, questions)                        -> [(reasoning, answer text, number)]
    self_consistency(model, tokenizer, prompts, n=8, temperature=0.7, max_new_tokens=256, seed=0)
                                                                      -> the n extracted answers per prompt
    majority_vote(answers), maj_at_k(answers_per_question, gold, k)   (plmkit.prompting.answers)

GSM8K rationales are turned into the exemplar layout by `gsm8k_rationale`: the calculator annotations
"<<48/2=24>>" are removed, the lines are joined by one space, and "#### 72" becomes "The answer is 72.".
Text comes from plmkit.generation.generate: prompts are batched (left padded) and generation stops at the
stop strings, by default lm-eval's "Q:" and a blank line (the model starting the next exemplar).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from plmkit.errors import ConfigError
from plmkit.generation import GenerationConfig, generate
from plmkit.prompting.answers import extract_flexible, gold_answer

Exemplar = tuple[str, str]  # (question, rationale ending in "The answer is N.")
STOP = ("Q:", "\n\n")  # lm-eval gsm8k-cot's `until`: the next question, or a blank line
ANSWER_PREFIX = "The answer is"
ZERO_SHOT_TRIGGER = "Let's think step by step."
ANSWER_TRIGGER = "Therefore, the answer (arabic numerals) is"  # Kojima et al.'s trigger for GSM8K
_CALCULATOR = re.compile(r"<<[^>]*>>")


# ---- prompts -------------------------------------------------------------------------------------------
def question_prompt(question: str) -> str:
    """ "Q: {question}\\nA:" — the model's part starts after "A:" (a space first, as in the exemplars)."""
    return f"Q: {question.strip()}\nA:"


def gsm8k_rationale(answer_text: str, where: str = "answer") -> str:
    """A GSM8K answer as an exemplar's rationale: "<<a*b=c>>" annotations removed, lines joined by one
    space, and the final "#### N" (commas removed) turned into "The answer is N."."""
    number = gold_answer(answer_text, where)
    steps = answer_text.rpartition("####")[0]
    lines = [line.strip() for line in _CALCULATOR.sub("", steps).splitlines() if line.strip()]
    return " ".join([*lines, f"{ANSWER_PREFIX} {number}."])


def exemplars_from_rows(rows: Sequence[dict[str, Any]]) -> list[Exemplar]:
    """(question, rationale) exemplars from GSM8K rows ({"question", "answer"}), in their order."""
    return [
        (str(row["question"]), gsm8k_rationale(str(row["answer"]), f"exemplar {i}"))
        for i, row in enumerate(rows)
    ]


def few_shot_prompt(exemplars: Sequence[Exemplar], question: str) -> str:
    """The few-shot CoT prompt: each exemplar as "Q: {question}\\nA: {rationale}", a blank line between
    them, then "Q: {question}\\nA:" for the model to continue (lm-eval gsm8k-cot's layout)."""
    shots = [f"{question_prompt(q)} {rationale.strip()}" for q, rationale in exemplars]
    return "\n\n".join([*shots, question_prompt(question)])


def zero_shot_prompt(question: str) -> str:
    """Stage 1 of zero-shot CoT: "Q: {question}\\nA: Let's think step by step."."""
    return f"{question_prompt(question)} {ZERO_SHOT_TRIGGER}"


def answer_prompt(stage1_prompt: str, reasoning: str) -> str:
    """Stage 2 of zero-shot CoT: the stage-1 prompt, the reasoning as generated (its trailing whitespace
    removed) and "\\nTherefore, the answer (arabic numerals) is"."""
    return f"{stage1_prompt}{reasoning.rstrip()}\n{ANSWER_TRIGGER}"


def rationale_text(question: str, answer: str, with_rationale: bool) -> tuple[str, str]:
    """(prompt, target) for causal-LM training on a GSM8K row: the prompt "Q: {question}\\nA:", and the
    target " {rationale} The answer is N." (with_rationale) or " The answer is N." (answer only), so the
    two arms of the scratchpad experiment differ in the target alone."""
    rationale = gsm8k_rationale(answer)
    target = rationale if with_rationale else f"{ANSWER_PREFIX} {gold_answer(answer)}."
    return question_prompt(question), f" {target}"


# ---- generation ----------------------------------------------------------------------------------------
def generate_batched(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    config: GenerationConfig,
    batch_size: int | None = None,
) -> list[str]:
    """`generate` over chunks of `batch_size` prompts (None: all at once); when sampling with a seed, chunk c
    draws with seed + c, so the texts depend on (seed, batch_size, prompts) only."""
    if batch_size is not None and batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1 prompts per generate call, got {batch_size}")
    size = batch_size or max(len(prompts), 1)
    texts: list[str] = []
    for c, start in enumerate(range(0, len(prompts), size)):
        chunk = config
        if config.do_sample and config.seed is not None:
            chunk = config.replace(seed=config.seed + c)
        texts += generate(model, tokenizer, list(prompts[start : start + size]), chunk)
    return texts


def two_stage(
    model: nn.Module,
    tokenizer: Any,
    stage1_prompts: Sequence[str],
    config: GenerationConfig,
    *,
    answer_max_new_tokens: int = 16,
    answer_stop: tuple[str, ...] = STOP,
    batch_size: int | None = None,
) -> list[tuple[str, str]]:
    """(reasoning, answer text) per stage-1 prompt: the reasoning generated with `config` (sampling
    settings apply here), then the answer after `answer_prompt`, greedily (at most
    `answer_max_new_tokens`, stopping at `answer_stop`)."""
    reasonings = generate_batched(model, tokenizer, stage1_prompts, config, batch_size)
    stage2 = [answer_prompt(p, r) for p, r in zip(stage1_prompts, reasonings, strict=True)]
    greedy = config.replace(
        do_sample=False, max_new_tokens=answer_max_new_tokens, stop=answer_stop, num_beams=1
    )
    answers = generate_batched(model, tokenizer, stage2, greedy, batch_size)
    return list(zip(reasonings, answers, strict=True))


def zero_shot_cot(
    model: nn.Module,
    tokenizer: Any,
    questions: Sequence[str],
    config: GenerationConfig | None = None,
    *,
    answer_max_new_tokens: int = 16,
    answer_stop: tuple[str, ...] = STOP,
    batch_size: int | None = None,
) -> list[tuple[str, str, str | None]]:
    """Zero-shot CoT (Kojima et al. 2022): per question (reasoning, answer text, extracted number).

    Stage 1 generates the reasoning after `zero_shot_prompt` with `config` (default: greedy, 256 new
    tokens, stop at "Q:" or a blank line); stage 2 (`two_stage`) the answer after `answer_prompt`; the
    number is `extract_flexible` of the answer text (Kojima et al.'s own cleansing reads the first number
    instead: `first_number`)."""
    config = config or GenerationConfig(max_new_tokens=256, stop=STOP)
    stage1 = [zero_shot_prompt(q) for q in questions]
    pairs = two_stage(
        model,
        tokenizer,
        stage1,
        config,
        answer_max_new_tokens=answer_max_new_tokens,
        answer_stop=answer_stop,
        batch_size=batch_size,
    )
    return [(r, a, extract_flexible(a)) for r, a in pairs]


def sampling_config(
    n: int,
    temperature: float,
    max_new_tokens: int,
    seed: int | None,
    stop: tuple[str, ...] = STOP,
    **options: Any,
) -> GenerationConfig:
    """The GenerationConfig of self-consistency's n paths: sampling at `temperature` (greedy when n == 1)."""
    if n < 1:
        raise ConfigError(f"self-consistency: n must be >= 1 sampled paths, got {n}")
    sample = n > 1
    return GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=sample,
        temperature=temperature if sample else 1.0,
        seed=seed,
        stop=stop,
        **options,
    )


def sample_paths(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    config: GenerationConfig,
    n: int,
    batch_size: int | None = None,
) -> list[list[str]]:
    """n completions of each prompt (each prompt repeated n times in the batch), grouped per prompt."""
    repeated = [p for p in prompts for _ in range(n)]
    texts = generate_batched(model, tokenizer, repeated, config, batch_size)
    return [texts[i * n : (i + 1) * n] for i in range(len(prompts))]


def self_consistency(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    n: int,
    temperature: float = 0.7,
    max_new_tokens: int = 256,
    seed: int | None = 0,
    *,
    stop: tuple[str, ...] = STOP,
    extract: Callable[[str], str | None] = extract_flexible,
    batch_size: int | None = None,
    **options: Any,
) -> list[list[str | None]]:
    """Self-consistency (Wang et al. 2023): n reasoning paths per prompt sampled at `temperature` (greedy
    when n == 1), each path's answer by `extract` (None when it gives none); vote with `majority_vote`.
    `options`: more GenerationConfig fields (top_k, top_p). Reproducible for one (seed, batch_size)."""
    config = sampling_config(n, temperature, max_new_tokens, seed, stop, **options)
    paths = sample_paths(model, tokenizer, prompts, config, n, batch_size)
    return [[extract(text) for text in texts] for texts in paths]
