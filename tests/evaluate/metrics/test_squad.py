"""SQuAD v1.1 EM / F1 by hand, from the official script's definitions."""

from __future__ import annotations

import pytest

from plmkit.errors import DataError
from plmkit.evaluate.metrics import exact_match_score, f1_score, normalize_answer, squad_scores


@pytest.mark.parametrize(
    ("text", "normalized"),
    [
        ("The Eiffel Tower", "eiffel tower"),
        ("  a   cat,  AN apple; the end. ", "cat apple end"),
        ("Theory of a thing", "theory of thing"),  # 'the' inside a word stays
        ("don't-stop!", "dontstop"),  # punctuation removed before the split: no space left behind
        ("“Quoted” — text", "“quoted” — text"),  # Unicode punctuation is not string.punctuation
        ("a", ""),
        ("", ""),
        ("the.cat", "thecat"),  # punctuation first, so 'thecat' is no article
    ],
)
def test_normalize_answer(text, normalized):
    assert normalize_answer(text) == normalized


def test_exact_match():
    assert exact_match_score("the Denver Broncos!", "Denver Broncos")
    assert not exact_match_score("Denver", "Denver Broncos")
    assert exact_match_score("", "the")  # both normalize to ''


def test_f1_token_overlap():
    # pred [denver, broncos, team] vs gold [denver, broncos]: P = 2/3, R = 1, F1 = 0.8
    assert f1_score("The Denver Broncos team", "Denver Broncos") == pytest.approx(0.8)
    # repeated tokens count once each per match (Counter intersection): P = 1/3, R = 1/1
    assert f1_score("cat cat cat", "the cat") == pytest.approx(2 * (1 / 3) / (1 / 3 + 1))
    assert f1_score("", "Denver") == 0.0
    assert f1_score("a", "the") == 0.0  # both empty after normalization: no shared token -> 0
    assert f1_score("Broncos", "broncos.") == 1.0


def test_squad_scores_best_gold_and_missing():
    answers = {
        "q1": ["Denver Broncos", "The Broncos"],  # EM through the second gold
        "q2": ["Santa Clara, California", "Levi's Stadium"],  # F1 from the best gold
        "q3": ["1990"],  # no prediction: 0, counted in the total
        "q4": ["gold"],
    }
    predictions = {"q1": "broncos", "q2": "Levi's Stadium in Santa Clara", "q4": "", "extra": "ignored"}
    scores = squad_scores(predictions, answers)
    # q2: vs gold 1: tokens [levis, stadium, in, santa, clara] vs [santa, clara, california]: P 2/5 R 2/3
    #     vs gold 2: [levis, stadium]: P 2/5, R 1 -> F1 4/7 (the best)
    f1_q2 = max(2 * 0.4 * (2 / 3) / (0.4 + 2 / 3), 2 * 0.4 * 1 / 1.4)
    assert f1_q2 == pytest.approx(4 / 7)
    assert scores["exact_match"] == pytest.approx(100 * 1 / 4)
    assert scores["f1"] == pytest.approx(100 * (1 + f1_q2) / 4)
    assert scores["missing"] == 1


def test_squad_scores_perfect_and_errors():
    assert squad_scores({"a": "x"}, {"a": ["x"]}) == {"exact_match": 100.0, "f1": 100.0, "missing": 0}
    with pytest.raises(DataError, match="no questions"):
        squad_scores({}, {})
    with pytest.raises(DataError, match="question 'a' needs a non-empty list"):
        squad_scores({"a": "x"}, {"a": []})
    with pytest.raises(DataError, match="question 'a' needs a non-empty list"):
        squad_scores({"a": "x"}, {"a": "x"})  # a bare string would be scored per character
