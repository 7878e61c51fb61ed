"""GSM8K answers: gold numbers, strict / flexible extraction, one spelling per number, the vote, maj@k."""

from __future__ import annotations

import json
import re

import pytest

from plmkit.errors import ConfigError, DataError, ShapeError
from plmkit.prompting.answers import (
    extract_flexible,
    extract_strict,
    first_number,
    gold_answer,
    is_correct,
    maj_at_k,
    majority_vote,
    normalize_number,
)


def test_gold_parses_every_gsm8k_test_row(shared_data):
    path = shared_data / "gsm8k" / "test.jsonl"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 1319
    golds = [gold_answer(row["answer"], f"test.jsonl:{i + 1}") for i, row in enumerate(rows)]
    assert all(re.fullmatch(r"-?[0-9]+", g) for g in golds), [g for g in golds if not g.isdigit()][:5]
    # the file's own last line of each answer, read independently
    assert golds == [r["answer"].splitlines()[-1].removeprefix("#### ").replace(",", "") for r in rows]
    assert any("," in r["answer"].splitlines()[-1] for r in rows)  # commas were there to remove
    assert any(g.startswith("-") for g in golds)


def test_gold_answer():
    assert gold_answer("Half is 48/2 = <<48/2=24>>24.\n#### 1,000") == "1000"
    assert gold_answer("x\n#### -3") == "-3"
    assert gold_answer("#### 5 then\n#### 72") == "72"  # the last mark
    with pytest.raises(DataError, match=r"test.jsonl:7: .*#### <number>"):
        gold_answer("no final number", "test.jsonl:7")
    with pytest.raises(DataError):
        gold_answer("#### ")


@pytest.mark.parametrize(
    "text, expected",
    [
        ("5 + 37 = 42. The answer is 42.", "42"),
        ("The answer is 42", "42"),  # lm-eval's unescaped "." would read "4" here
        ("The answer is -7.", "-7"),
        ("The answer is 1,234,567.", "1234567"),
        ("The answer is 3.5.\n", "3.5"),
        ("He pays $12.\n#### 12", "12"),
        ("#### -1,000", "-1000"),
        ("The answer is 8. Q: ... The answer is 9.", "8"),  # the first
        ("#### 3\nThe answer is 4.", "3"),  # whichever comes first
        ("So 6 * 7 = 42 apples.", None),  # no phrase: strict gives nothing
        ("The answer is $42.", None),  # lm-eval's strict pattern has no "$"
        ("the answer is 42.", None),  # case matters, as in lm-eval
    ],
)
def test_extract_strict(text, expected):
    assert extract_strict(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("5 + 37 = 42. The answer is 42.", "42"),
        ("She has 6 * 7 = 42 apples", "42"),
        ("He owes -15 dollars.", "-15"),
        ("It cost $1,250.50 in total.", "1250.50"),
        ("1, 2, 3", "3"),
        ("3 - 5 = -2.", "-2"),
        ("There were 5 apples...", "5"),  # lm-eval would read ".." from the ellipsis
        ("no numbers here", None),
        ("", None),
        ("x7", "7"),
    ],
)
def test_extract_flexible(text, expected):
    assert extract_flexible(text) == expected


def test_first_number():
    assert first_number(" 18. Because 9 * 2 = 18 and 3") == "18"
    assert first_number(" $1,000 dollars, then 5") == "1000"
    assert first_number("none") is None


@pytest.mark.parametrize(
    "a, b",
    [
        ("18.00", "18"),
        ("$18", "18"),
        ("18.", "18"),
        ("1,000", "1000"),
        ("+3", "3"),
        ("-0", "0"),
        (".5", "0.50"),
    ],
)
def test_normalize_number_equal(a, b):
    assert normalize_number(a) == normalize_number(b)


def test_normalize_number_values():
    assert normalize_number("18.00") == "18"
    assert normalize_number("0.50") == "0.5"
    assert normalize_number("-2.250") == "-2.25"
    assert normalize_number("1.2.3") == "1.2.3"  # not a number: cleaned, kept
    assert normalize_number(None) is None
    assert normalize_number("18") != normalize_number("18.5")
    assert is_correct("$18.00", "18") and not is_correct(None, "18") and not is_correct("17", "18")


def test_majority_vote():
    assert majority_vote(["18", None, "7", "18.0"]) == "18"
    assert majority_vote(["7", "18", "18", "7"]) == "7"  # tie: the first seen
    assert majority_vote(["18", "7", "7", "18"]) == "18"
    assert majority_vote([None, "3", None, None]) == "3"  # None does not vote
    assert majority_vote([None, None]) is None
    assert majority_vote([]) is None


def test_maj_at_k():
    answers = [
        ["1", "2", "2", "2"],  # maj@1 wrong, maj@2 tie -> "1" wrong, maj@4 "2" right
        ["5", None, "6", "6"],  # maj@1 right, maj@2 right, maj@4 "6" wrong
        [None, None, None, None],  # never right
    ]
    gold = ["2", "5", "1"]
    assert maj_at_k(answers, gold, 1) == pytest.approx(1 / 3)
    assert maj_at_k(answers, gold, 2) == pytest.approx(1 / 3)
    assert maj_at_k(answers, gold, 3) == pytest.approx(2 / 3)  # ["5", None, "6"]: tie -> "5"
    assert maj_at_k(answers, gold, 4) == pytest.approx(1 / 3)
    with pytest.raises(ShapeError, match="fewer than k=5"):
        maj_at_k(answers, gold, 5)
    with pytest.raises(ShapeError, match="2 gold"):
        maj_at_k(answers, gold[:2], 1)
    with pytest.raises(ConfigError):
        maj_at_k(answers, gold, 0)


# lm-evaluation-harness's gsm8k filters and exact-match cleaning, written out literally: the reference for
# every text where this module does not say it departs from them
def _lm_eval_clean(text: str) -> str:
    for pattern in (",", r"\$", r"(?s).*#### ", r"\.$"):
        text = re.sub(pattern, "", text)
    return text


def _lm_eval(pattern: str, text: str, group_select: int) -> str | None:
    found = re.findall(pattern, text)
    if not found:
        return None
    match = found[group_select]
    if isinstance(match, tuple):
        match = next((m for m in match if m), None)
    return _lm_eval_clean(match.strip()) if match else None


@pytest.mark.parametrize(
    "text",
    [
        "Natalia sold 48/2 = 24 clips in May. She sold 48+24 = 72 clips. The answer is 72.",
        "The answer is 1,000.\n\nQ: next",
        "The answer is -3.5 dollars.",
        "Weng earns 12/60 = $0.2 per minute. Working 50 minutes, she earned 0.2 x 50 = $10.",
        "It costs $1,250.50, so 3 - 5 = -2 left",
        "The answer is 8. Q: ... The answer is 9.",
    ],
)
def test_extraction_matches_lm_eval(text):
    assert extract_strict(text) == _lm_eval(r"The answer is (\-?[0-9\.\,]+).", text, 0)
    assert extract_flexible(text) == _lm_eval(r"(-?[$0-9.,]{2,})|(-?[0-9]+)", text, -1)
    marked = text.replace("The answer is", "####")  # gsm8k.yaml's strict-match instead
    assert extract_strict(marked) == _lm_eval(r"#### (\-?[0-9\.\,]+)", marked, 0)
