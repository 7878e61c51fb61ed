"""benchmarks/cot_scratchpad.py: the problem generator (its rationales are right, the held-out questions are
not trained on, both arms' texts come from cot.rationale_text) and the whole pipeline with --tiny (two arms
trained from one initial checkpoint, greedy and maj@k evaluated, the JSON written). Correctness only: no
accuracy is asserted."""

from __future__ import annotations

import json
import random
import sys

import pytest

from tiny import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))

import cot_scratchpad as bench  # noqa: E402

from plmkit.prompting.answers import extract_strict, gold_answer  # noqa: E402


def test_problems_have_right_rationales_and_unseen_test_questions():
    rng = random.Random(3)
    for _ in range(200):
        p = bench.make_problem(rng, max_start=20, max_operand=15)
        steps = [line for line in p.answer.splitlines() if not line.startswith("####")]
        assert len(steps) in (2, 3) and gold_answer(p.answer) == p.gold
        assert bench.step_diagnostics([p], [p.answer])["arithmetic_right"] == 1.0
        first = int(steps[0].split()[0])
        assert f"has {first} " in p.question and int(p.gold) >= 0
        for before, after in zip(steps, steps[1:]):  # each step starts from the previous result
            assert before.split(" = ")[1].rstrip(".") == after.split()[0]
    train, test = bench.make_split(300, 40, seed=0, max_start=20, max_operand=15)
    assert len(train) == 300 and len({p.question for p in test}) == 40
    assert not {p.question for p in train} & {p.question for p in test}


def test_any_order_problems_have_several_valid_paths_to_one_answer():
    """--any-order: 3 steps, applied in a random order whose running count never goes below zero; the
    story is generated as in the default task, so the answer is the story's."""
    rng = random.Random(5)
    orders = set()
    for _ in range(300):
        p = bench.make_problem(rng, max_start=9, max_operand=9, any_order=True)
        equations = bench.EQUATION.findall(p.answer)
        assert len(equations) == 3 and gold_answer(p.answer) == p.gold
        changes = [int(b) if op == "+" else -int(b) for _, op, b, _ in equations]
        start = int(equations[0][0])
        assert f"has {start} " in p.question and bench.never_negative(start, changes)
        assert start + sum(changes) == int(p.gold) and all(int(c) >= 0 for *_, c in equations)
        diagnostics = bench.step_diagnostics([p], [p.answer], any_order=True)
        assert (
            diagnostics["arithmetic_right"] == diagnostics["operand_right"] == diagnostics["chained"] == 1.0
        )
        orders.add(tuple(changes) != tuple(story_changes(p.question)))
    assert orders == {True, False}  # some rationales follow the story's order, some do not


def story_changes(question: str) -> list[int]:
    sentences = question.split(". ")[1:]
    signs = [1 if any(w in s for w in ("buys", "finds", "gets", "wins")) else -1 for s in sentences]
    numbers = [
        int(next(w for w in s.split() if w.isdigit())) for s in sentences if any(c.isdigit() for c in s)
    ]
    return [sign * n for sign, n in zip(signs, numbers)]


def test_any_order_diagnostics_take_each_step_once_in_any_order():
    p = bench.Problem("…", "7 + 5 = 12.\n12 - 3 = 9.\n#### 9", "9")
    swapped = " 7 - 3 = 4. 4 + 5 = 9. The answer is 9."
    assert bench.step_diagnostics([p], [swapped], any_order=True)["operand_right"] == 1.0
    assert bench.step_diagnostics([p], [swapped])["operand_right"] == 0.0  # the default task: at its place
    twice = " 7 + 5 = 12. 12 + 5 = 17. The answer is 17."  # one step used twice, one never
    assert bench.step_diagnostics([p], [twice], any_order=True)["operand_right"] == 0.5


def test_the_two_arms_differ_in_the_target_only():
    p = bench.Problem(
        "Tom has 7 apples. He buys 5 more. How many apples does he have now?", "7 + 5 = 12.\n#### 12", "12"
    )
    with_rationale = bench.training_text(p, True)
    answer_only = bench.training_text(p, False)
    assert with_rationale == f"Q: {p.question}\nA: 7 + 5 = 12. The answer is 12."
    assert answer_only == f"Q: {p.question}\nA: The answer is 12."
    assert extract_strict(with_rationale) == extract_strict(answer_only) == "12"


def test_step_diagnostics_separate_arithmetic_copying_and_chaining():
    p = bench.Problem(
        "Tom has 7 apples. He buys 5 more. He gives away 3. How many?",
        "7 + 5 = 12.\n12 - 3 = 9.\n#### 9",
        "9",
    )
    assert bench.step_diagnostics([p], [" 7 + 5 = 12. 12 - 3 = 9. The answer is 9."]) == {
        "equations": 2, "arithmetic_right": 1.0, "operand_right": 1.0, "chained": 1.0, "step_count_right": 1.0,
    }  # fmt: skip
    # wrong sum, a miscopied operand (4 for 3), then a start that is not the previous result
    found = bench.step_diagnostics([p], [" 7 + 5 = 13. 13 - 4 = 9. 8 + 1 = 9. The answer is 9."])
    assert found == {
        "equations": 3, "arithmetic_right": round(2 / 3, 4), "operand_right": round(1 / 3, 4),
        "chained": round(2 / 3, 4), "step_count_right": 0.0,
    }  # fmt: skip
    assert bench.step_diagnostics([p], [" The answer is 9."])["equations"] == 0


def test_sign_test_matches_scipy():
    from scipy.stats import binomtest

    for only_a, only_b in ((10, 3), (4, 4), (0, 7), (25, 12)):
        expected = binomtest(only_a, only_a + only_b, 0.5).pvalue
        assert abs(bench.sign_test(only_a, only_b) - expected) < 1e-12
    assert bench.sign_test(0, 0) == 1.0


@pytest.mark.slow
def test_tiny_pipeline_writes_both_arms(tmp_path, capsys):
    work = tmp_path / "work"
    report = bench.main(["--tiny", "--out", str(tmp_path), "--work", str(work)])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    # the rationale arm at its checkpoints of steps 1 and 2, then each arm at the end, then the summary
    assert [line.get("arm") for line in lines] == ["rationale", "rationale", "rationale", "answer_only", None]
    (written,) = tmp_path.glob("cot-scratchpad-tiny-*.json")
    assert json.loads(written.read_text()) == json.loads(json.dumps(report))
    for arm in report["arms"].values():
        assert 0 <= arm["greedy_accuracy_flexible"] <= 1 and 0 <= arm["maj@4"] <= 1
        assert {"maj@1", "maj@2", "maj@4"} <= set(arm) and len(arm["greedy_examples"]) == 5
        assert arm["loss_curve"] and arm["loss_curve"][-1]["step"] == report["settings"]["steps"]
        assert arm["problems_seen"] > 0 and arm["train_seconds"] > 0
    rationale, answer_only = report["arms"]["rationale"], report["arms"]["answer_only"]
    for name in ("rationale", "answer_only"):  # one initial checkpoint (weights and tokenizer) for both
        recipe = json.loads((work / "runs" / name / "recipe.json").read_text())
        assert recipe["init_from"] == str(work / "init")
        assert recipe["data"]["sources"][0]["path"] == str(work / f"{name}.jsonl")
    lines = {n: (work / f"{n}.jsonl").read_text().splitlines() for n in ("rationale", "answer_only")}
    assert len(lines["rationale"]) == len(lines["answer_only"]) == report["settings"]["train_problems"]
    assert all(" = " in json.loads(line)["text"] for line in lines["rationale"])
    assert not any(" = " in json.loads(line)["text"] for line in lines["answer_only"])
    assert rationale["tokens_per_problem"] > answer_only["tokens_per_problem"]
    assert report["settings"]["tiny"] and report["wall_seconds"]["total"] > 0
    assert isinstance(report["rationale_wins"], bool) and isinstance(report["self_consistency_wins"], bool)
    assert report["only_rationale_right"] + report["only_answer_only_right"] <= 8
    assert 0 <= report["sign_test_p"] <= 1 and {"maj@4_T0.3", "greedy_steps"} <= set(rationale)
    along = report["self_consistency_along_training"]
    assert [p["step"] for p in along] == [1, 2, 3] and along[-1] == {
        "step": 3,
        **report["self_consistency_final"],
    }
    for point in along:
        assert (
            point["only_majority_right"] + point["only_greedy_right"] <= 8 and 0 <= point["sign_test_p"] <= 1
        )
        assert point["majority_minus_greedy_points"] == round(100 * (point["maj@4"] - point["greedy"]), 1)
    assert set(report["self_consistency_wins_at_steps"]) <= {1, 2, 3}
    capsys.readouterr()
    # the saved checkpoints again, at other temperatures and no training
    again = bench.main(
        ["--tiny", "--out", str(tmp_path), "--work", str(work), "--rescore", "1,3", "--temperatures", "0.3,1"]
    )
    assert [(p["step"], p["temperature"]) for p in again["rescore"]] == [
        (1, 0.3),
        (1, 1.0),
        (3, 0.3),
        (3, 1.0),
    ]
    assert (
        again["rescore"][2]["greedy"] == along[-1]["greedy"]
    )  # the same checkpoint, the same greedy answers
    (rescored,) = tmp_path.glob("cot-scratchpad-rescore-tiny-*.json")
    assert json.loads(rescored.read_text()) == json.loads(json.dumps(again))
    assert again["test_problems_scored"] == 8
    # a confirmation on new problems: their number, and scored by the same checkpoint
    fresh = bench.main(
        ["--tiny", "--out", str(tmp_path), "--work", str(work), "--rescore", "3", "--fresh-test", "12"]
    )
    assert fresh["test_problems_scored"] == 12 and [p["step"] for p in fresh["rescore"]] == [3, 3, 3]
    with pytest.raises(SystemExit):
        bench.main(["--tiny", "--work", str(work), "--rescore", "7", "--out", str(tmp_path)])


@pytest.mark.parametrize(
    "bad",
    [
        ["--rescore", "1000"],  # no --work
        ["--checkpoints", "-1"],
        ["--steps", "10", "--checkpoints", "11"],
        ["--work", "w", "--rescore", "10,x"],
        ["--work", "w", "--rescore", "0"],
        ["--work", "w", "--rescore", "10", "--temperatures", "0"],
        ["--fresh-test", "100"],  # without --rescore
        ["--work", "w", "--rescore", "10", "--fresh-test", "-1"],
    ],
)
def test_out_of_range_options_are_refused(bad):
    with pytest.raises(SystemExit):
        bench.parse_args(bad)


def test_fresh_problems_are_new_and_distinct():
    train, test = bench.make_split(300, 40, 0, 9, 9)
    fresh = bench.fresh_problems(50, [*train, *test], 0, 9, 9)
    questions = [p.question for p in fresh]
    assert len(set(questions)) == 50 and not set(questions) & {p.question for p in [*train, *test]}
    assert [p.question for p in bench.fresh_problems(50, [*train, *test], 0, 9, 9)] == questions  # seeded
