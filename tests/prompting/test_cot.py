"""Chain of thought: prompt texts, the two stages of zero-shot CoT, self-consistency, CotTask's metrics and
its evaluation on a tiny causal LM (mechanics only: a random model's numbers mean nothing)."""

from __future__ import annotations

import json

import pytest

import plmkit.prompting.cot as cot
from plmkit.data.sources import SkipReport
from plmkit.data.tasks import Row, TaskSplit
from plmkit.errors import ConfigError, DataError
from plmkit.evaluate.tasks.run import evaluate_split
from plmkit.generation import GenerationConfig, generate
from plmkit.prompting.cot import (
    answer_prompt,
    few_shot_prompt,
    gsm8k_rationale,
    rationale_text,
    self_consistency,
    zero_shot_cot,
    zero_shot_prompt,
)
from plmkit.prompting.cot_task import CotConfig, CotPath, CotPrediction, CotTask, cot_metrics, maj_ks
from plmkit.tokenizer import Tokenizer
from tiny import tiny_model

NATALIA = (
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?"
)
NATALIA_ANSWER = (
    "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
    "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72"
)
NATALIA_RATIONALE = (
    "Natalia sold 48/2 = 24 clips in May. Natalia sold 48+24 = 72 clips altogether in April and May. "
    "The answer is 72."
)


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    """Byte-level BPE without merges: every byte a token, exact round trips."""
    return Tokenizer.train_bpe(["Q: A: The answer is 0123456789."], vocab_size=258)


@pytest.fixture(scope="module")
def model(tokenizer):
    return tiny_model("causal", vocab_size=tokenizer.vocab_size, max_positions=512, n_layer=1)


def split_of(rows: list[tuple[str, str]]) -> TaskSplit:
    return TaskSplit(
        "test",
        "gsm.jsonl",
        [Row({"question": q, "answer": a}, f"gsm.jsonl:{i + 1}") for i, (q, a) in enumerate(rows)],
        SkipReport(),
    )


# ---- prompts -------------------------------------------------------------------------------------------
def test_gsm8k_rationale_and_few_shot_prompt():
    assert gsm8k_rationale(NATALIA_ANSWER) == NATALIA_RATIONALE
    assert gsm8k_rationale("He pays $<<12/60=0.2>>0.2.\n#### 1,000") == "He pays $0.2. The answer is 1000."
    prompt = few_shot_prompt([(NATALIA, NATALIA_RATIONALE), ("Q2?", "1 + 1 = 2. The answer is 2.")], "Q3?")
    assert prompt == (
        f"Q: {NATALIA}\nA: {NATALIA_RATIONALE}\n\nQ: Q2?\nA: 1 + 1 = 2. The answer is 2.\n\nQ: Q3?\nA:"
    )
    assert few_shot_prompt([], "Q3?") == "Q: Q3?\nA:"


def test_every_train_rationale_is_clean(shared_data):
    path = shared_data / "gsm8k" / "train_first2000.jsonl"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    for row in rows:
        rationale = gsm8k_rationale(row["answer"])
        assert "<<" not in rationale and ">>" not in rationale and "####" not in rationale
        assert "\n" not in rationale
        number = row["answer"].rpartition("#### ")[2].replace(",", "")
        assert rationale.endswith(f"The answer is {number}.")


def test_rationale_text_pairs():
    with_rationale = rationale_text(NATALIA, NATALIA_ANSWER, with_rationale=True)
    answer_only = rationale_text(NATALIA, NATALIA_ANSWER, with_rationale=False)
    assert with_rationale == (f"Q: {NATALIA}\nA:", f" {NATALIA_RATIONALE}")
    assert answer_only == (f"Q: {NATALIA}\nA:", " The answer is 72.")


def test_two_stage_prompt_text_exactly(monkeypatch, model, tokenizer):
    """zero_shot_cot sends exactly these two prompts to generate, and reads the answer's last number."""
    seen: list[tuple[list[str], GenerationConfig]] = []
    replies = iter([[" 3 + 4 = 7 apples.\n"], [" 7. Or 8"]])

    def fake_generate(model, tokenizer, prompts, config):
        seen.append((prompts, config))
        return next(replies)

    monkeypatch.setattr(cot, "generate", fake_generate)
    sampled = GenerationConfig(max_new_tokens=40, do_sample=True, temperature=0.7, seed=3, stop=("Q:",))
    out = zero_shot_cot(model, tokenizer, ["Tom has 3 apples and buys 4. How many?"], sampled)
    stage1 = "Q: Tom has 3 apples and buys 4. How many?\nA: Let's think step by step."
    stage2 = stage1 + " 3 + 4 = 7 apples.\nTherefore, the answer (arabic numerals) is"
    assert [prompts for prompts, _ in seen] == [[stage1], [stage2]]
    assert zero_shot_prompt("Tom has 3 apples and buys 4. How many?") == stage1
    assert answer_prompt(stage1, " 3 + 4 = 7 apples.\n") == stage2
    assert seen[0][1].do_sample and seen[0][1].max_new_tokens == 40
    assert not seen[1][1].do_sample and seen[1][1].max_new_tokens == 16  # the answer: greedy, short
    assert out == [(" 3 + 4 = 7 apples.\n", " 7. Or 8", "8")]  # flexible: the last number


def test_zero_shot_cot_with_a_model_equals_generate_by_hand(model, tokenizer):
    config = GenerationConfig(max_new_tokens=6, stop=("Q:",))
    questions = ["1+1?", "What is 12 times 3?"]
    out = zero_shot_cot(model, tokenizer, questions, config, answer_max_new_tokens=4, batch_size=1)
    for question, (reasoning, answer, number) in zip(questions, out, strict=True):
        stage1 = zero_shot_prompt(question)
        assert reasoning == generate(model, tokenizer, stage1, config)
        stage2 = answer_prompt(stage1, reasoning)
        assert answer == generate(model, tokenizer, stage2, max_new_tokens=4, stop=cot.STOP)
        assert number == cot.extract_flexible(answer)


# ---- self-consistency ----------------------------------------------------------------------------------
def test_self_consistency_is_reproducible_with_a_seed(model, tokenizer):
    prompts = ["Q: 2+2?\nA:", "Q: 10-3?\nA:"]
    texts = []

    def extract(text):  # keep the text: compare whole paths, not just the (mostly None) numbers
        texts.append(text)
        return cot.extract_flexible(text)

    options = dict(n=4, temperature=1.0, max_new_tokens=8, stop=(), extract=extract)
    first = self_consistency(model, tokenizer, prompts, seed=7, **options)
    again = self_consistency(model, tokenizer, prompts, seed=7, **options)
    self_consistency(model, tokenizer, prompts, seed=8, **options)  # its texts: texts[16:]
    assert len(first) == 2 and all(len(answers) == 4 for answers in first)
    assert first == again and texts[:8] == texts[8:16]
    assert texts[16:] != texts[:8]
    assert len(set(texts[:4])) > 1  # the paths of one prompt differ
    # n == 1 is one greedy path
    greedy = self_consistency(model, tokenizer, prompts, n=1, max_new_tokens=8, stop=(), extract=str)
    assert greedy == [[t] for t in generate(model, tokenizer, prompts, max_new_tokens=8)]


# ---- the task ------------------------------------------------------------------------------------------
def path(answer: str | None, strict: str | None = None) -> CotPath:
    return CotPath(f"... {answer}", strict, answer)


def test_cot_metrics_on_hand_made_predictions():
    gold = ["18", "5", "1000"]
    predictions = [
        CotPrediction([path("18.00", "18")]),
        CotPrediction([path("6", "5")]),
        CotPrediction([path(None)]),
    ]
    assert cot_metrics(predictions, gold) == {
        "accuracy_strict": pytest.approx(2 / 3),
        "accuracy_flexible": pytest.approx(1 / 3),
    }
    sampled = [
        CotPrediction([path("1"), path("18"), path("18"), path("18")], greedy=path("18")),
        CotPrediction([path("5", "5"), path("6"), path("6"), path(None)], greedy=path("6", "5")),
        CotPrediction([path("$1,000"), path(None), path("7"), path("7")], greedy=path("1000")),
    ]
    assert maj_ks(4) == [1, 2, 4] and maj_ks(5) == [1, 2, 4, 5] and maj_ks(1) == [1]
    metrics = cot_metrics(sampled, gold)
    assert metrics["accuracy_flexible"] == pytest.approx(1 / 3)  # 18 right; 6 wrong; 7 beats 1000
    assert metrics == {
        "accuracy_strict": pytest.approx(1 / 3),  # only the second has strict answers: 5
        "accuracy_flexible": pytest.approx(1 / 3),
        "maj@1_strict": pytest.approx(1 / 3),
        "maj@2_strict": pytest.approx(1 / 3),
        "maj@4_strict": pytest.approx(1 / 3),
        "maj@1_flexible": pytest.approx(2 / 3),  # 1 x, 5 ok, 1000 ok
        "maj@2_flexible": pytest.approx(2 / 3),  # tie 1/18 -> 1 x; tie 5/6 -> 5 ok; 1000 ok
        "maj@4_flexible": pytest.approx(1 / 3),  # 18 ok; 6 x; 1000 vs 7,7 -> 7 x
        "greedy_accuracy_strict": pytest.approx(1 / 3),
        "greedy_accuracy_flexible": pytest.approx(2 / 3),
    }


def test_cot_task_end_to_end_with_a_scripted_generator(monkeypatch, model, tokenizer):
    """features -> batches -> outputs -> predictions -> metrics, with a generator that knows 2 of 3."""
    rows = [
        ("How many apples? 7", "x\n#### 7"),
        ("How many pears? 1,000", "y\n#### 1,000"),
        ("Hard?", "#### 3"),
    ]
    prompts_seen: list[str] = []

    def fake_generate(model, tokenizer, prompts, config):
        prompts_seen.extend(prompts)
        # the last number of the question is the answer for two questions; "Hard?" has none
        return [
            f" Think. The answer is {p.rsplit(' ', 1)[-1].removesuffix(chr(10) + 'A:')}." for p in prompts
        ]

    monkeypatch.setattr(cot, "generate", fake_generate)
    task = CotTask(CotConfig(shots=1, batch_size=2), tokenizer, exemplars=[("Q0?", "0. The answer is 0.")])
    result = evaluate_split(task, model, split_of(rows))
    assert sorted(prompts_seen) == sorted(
        f"Q: Q0?\nA: 0. The answer is 0.\n\nQ: {q}\nA:" for q, _ in rows
    )  # the prompts survived the batch's bytes
    assert result.metrics == {
        "accuracy_strict": pytest.approx(2 / 3),
        "accuracy_flexible": pytest.approx(2 / 3),
    }
    assert [r["prediction"] for r in result.records] == ["7", "1000", None]
    assert result.records[1]["gold"] == "1000" and result.records[0]["where"] == "gsm.jsonl:1"


def test_cot_task_paths_equal_generate_by_hand(model, tokenizer):
    rows = [("1+1?", "#### 2"), ("What is 12 times 3?", "#### 36")]
    few = CotTask(
        CotConfig(shots=1, max_new_tokens=6, batch_size=2), tokenizer, exemplars=[("0?", "The answer is 0.")]
    )
    result = evaluate_split(few, model, split_of(rows))
    for (question, _), prediction in zip(rows, result.predictions, strict=True):
        expected = generate(model, tokenizer, few.prompt(question), max_new_tokens=6, stop=cot.STOP)
        assert [p.text for p in prediction.paths] == [expected]
        assert prediction.greedy is None
    zero = CotTask(
        CotConfig(mode="zero_shot", n_samples=3, max_new_tokens=5, answer_max_new_tokens=3, batch_size=2),
        tokenizer,
    )
    result = evaluate_split(zero, model, split_of(rows))
    assert all(len(p.paths) == 3 and p.greedy is not None for p in result.predictions)
    assert all("\nTherefore, the answer (arabic numerals) is" in p.text for p in result.predictions[0].paths)
    assert {"maj@1_flexible", "maj@2_flexible", "maj@3_flexible", "greedy_accuracy_strict"} <= set(
        result.metrics
    )
    again = evaluate_split(zero, model, split_of(rows))
    assert again.predictions == result.predictions  # the seed makes the sampled paths reproducible


def test_cot_task_config_errors(tmp_path, tokenizer):
    with pytest.raises(ConfigError, match="needs exemplars"):
        CotTask(CotConfig(shots=2), tokenizer)
    with pytest.raises(ConfigError, match="only 1 exemplars"):
        CotTask(CotConfig(shots=2), tokenizer, exemplars=[("q", "a")])
    with pytest.raises(ConfigError, match="n_samples"):
        CotConfig(n_samples=0)
    with pytest.raises(ConfigError, match="mode"):
        CotConfig(mode="few-shot")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="evaluates only"):
        CotTask(CotConfig(shots=0), tokenizer).loss({}, {})
    exemplars = tmp_path / "train.jsonl"
    exemplars.write_text(
        "\n".join(
            json.dumps({"question": q, "answer": a}) for q, a in [(NATALIA, NATALIA_ANSWER), ("q", "#### 1")]
        )
    )
    task = CotTask(CotConfig(shots=1, exemplars=str(exemplars)), tokenizer)
    assert task.exemplars == [(NATALIA, NATALIA_RATIONALE)]
    with pytest.raises(DataError, match=r"gsm.jsonl:1: .*#### <number>"):
        task.features(split_of([("q", "no number")]))
