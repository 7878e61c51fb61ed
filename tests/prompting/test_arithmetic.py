"""The synthetic addition task: deterministic problems, the verifier, SFT rows and verifier-labelled pairs."""

from __future__ import annotations

import pytest

from plmkit.errors import ConfigError, DataError
from plmkit.prompting import arithmetic
from plmkit.prompting.arithmetic import Problem


def test_problems_are_deterministic_and_in_range():
    a = arithmetic.problems(200, seed=3, digits=2)
    assert a == arithmetic.problems(200, seed=3, digits=2)
    assert a != arithmetic.problems(200, seed=4, digits=2)
    assert all(0 <= p.a < 100 and 0 <= p.b < 100 for p in a)
    assert Problem(23, 58).prompt == "23+58=" and Problem(23, 58).answer == "81"
    with pytest.raises(ConfigError, match="digits"):
        arithmetic.problems(1, digits=0)


@pytest.mark.parametrize(
    ("prompt", "completion", "expected"),
    [
        ("23+58=", "81", 1.0),
        ("23+58=", " 81\n", 1.0),
        ("23+58=", "71", 0.0),
        ("23+58=", "81 and more", 0.0),
        ("23+58=", "", 0.0),
        ("### Instruction:\n1+1=\n\n### Instruction:\n23+58=\n\n### Response:\n", "81", 1.0),  # the last one
    ],
)
def test_verifier(prompt, completion, expected):
    assert arithmetic.reward(prompt, completion) == expected


def test_verifier_needs_a_problem():
    with pytest.raises(DataError, match="no addition"):
        arithmetic.reward("hello", "81")


def test_accuracy():
    assert arithmetic.accuracy(["1+2=", "3+4="], ["3", "8"]) == 0.5
    with pytest.raises(DataError):
        arithmetic.accuracy(["1+2="], [])


def test_sft_rows_are_prompt_completion_and_correct():
    rows = arithmetic.sft_rows(50, seed=0)
    assert all(set(r) == {"prompt", "completion"} for r in rows)
    assert all(arithmetic.reward(r["prompt"], r["completion"]) == 1.0 for r in rows)
    assert [r["prompt"] for r in rows] == [p.prompt for p in arithmetic.problems(50, seed=0)]


def test_preference_pairs_are_labelled_by_the_verifier():
    pairs = arithmetic.preference_pairs(300, seed=7, digits=2)
    assert pairs == arithmetic.preference_pairs(300, seed=7, digits=2)
    for row in pairs:
        assert arithmetic.reward(row["prompt"], row["chosen"]) == 1.0
        assert arithmetic.reward(row["prompt"], row["rejected"]) == 0.0
        assert row["rejected"].isdigit()
    # the mistakes vary (carry, off by one / ten, swaps, ...)
    assert len({int(r["rejected"]) - int(r["chosen"]) for r in pairs}) > 10


def test_label_pairs_from_samples():
    pairs = arithmetic.label_pairs("2+3=", ["5", "6", "5", "4", " 5"])
    assert {(p["chosen"], p["rejected"]) for p in pairs} == {
        ("5", "6"), ("5", "4"), (" 5", "6"), (" 5", "4"),
    }  # fmt: skip
    assert arithmetic.label_pairs("2+3=", ["6", "7"]) == []
