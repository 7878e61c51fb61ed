"""CMRC 2018 EM / F1 by hand, from the official cmrc2018_evaluate.py definitions."""

from __future__ import annotations

import pytest

from plmkit.errors import DataError
from plmkit.evaluate.metrics import (
    cmrc_exact_match,
    cmrc_f1,
    cmrc_scores,
    mixed_segmentation,
    remove_punctuation,
)
from plmkit.evaluate.metrics.cmrc import longest_common_substring


@pytest.mark.parametrize(
    ("text", "rm_punc", "segments"),
    [
        ("1990年", True, ["1990", "年"]),
        ("1990年代", True, ["1990", "年", "代"]),
        ("北京大学Peking University", True, ["北", "京", "大", "学", "peking", "university"]),
        ("《红楼梦》", True, ["红", "楼", "梦"]),
        ("《红楼梦》", False, ["《", "红", "楼", "梦", "》"]),
        ("x-ray机", True, ["xray", "机"]),  # a dropped mark does not end the run
        ("x-ray机", False, ["x", "-", "ray", "机"]),
        ("约3.5米", True, ["约", "3.5", "米"]),
        ("  ABC def  ", True, ["abc", "def"]),  # lower-cased and stripped
        ("abc，def", True, ["abcdef"]),  # the script drops the mark without ending the run
        ("abc，def", False, ["abc", "，", "def"]),
        ("1,000人", True, ["1,000", "人"]),
        ("他说……好", True, ["他", "说", "…", "…", "好"]),  # '……' never matches one character
        ("", True, []),
    ],
)
def test_mixed_segmentation(text, rm_punc, segments):
    assert mixed_segmentation(text, rm_punc=rm_punc) == segments


def test_runs_split_like_nltk_on_typical_answers():
    # nltk.word_tokenize without its punkt sentence splitter (a data download)
    nltk_tokenize = pytest.importorskip("nltk.tokenize").NLTKWordTokenizer().tokenize
    for run in ["peking university", "1990", "3.5", "1,000", "50%", "$100", "a, b", "world war ii", "it's"]:
        assert mixed_segmentation(run) == nltk_tokenize(run), run


def test_remove_punctuation():
    assert remove_punctuation(" 《红楼梦》。 ") == "红楼梦"
    assert remove_punctuation("Tom's, A-B!") == "tom's, ab!"  # only the listed marks go


def test_longest_common_substring_is_contiguous():
    assert longest_common_substring(list("abcxde"), list("abde")) == 2  # 'ab' or 'de', not 'abde'
    assert longest_common_substring([], list("abc")) == 0
    assert longest_common_substring(list("xyz"), list("xyz")) == 3


def test_f1_from_the_definition():
    # ['1990', '年'] vs ['1990', '年', '代']: lcs 2, P = 2/2, R = 2/3 -> F1 = 0.8
    assert cmrc_f1("1990年", ["1990年代"]) == pytest.approx(0.8)
    # the best gold counts
    assert cmrc_f1("1990年", ["二十世纪", "1990年代", "1990年"]) == 1.0
    # lcs of ['在', '北', '京', '市'] and ['北', '京']: 2 -> P 2/4, R 2/2 -> F1 2/3
    assert cmrc_f1("在北京市", ["北京"]) == pytest.approx(2 / 3)
    assert cmrc_f1("", ["北京"]) == 0.0
    assert cmrc_f1("上海", ["北京"]) == 0.0


def test_exact_match_ignores_listed_punctuation_and_case():
    assert cmrc_exact_match("《红楼梦》", ["红楼梦"])
    assert cmrc_exact_match("Beijing", ["北京", "beijing"])
    assert not cmrc_exact_match("红楼梦。", ["红楼"])


def test_cmrc_scores():
    answers = {"q1": ["1990年代"], "q2": ["《红楼梦》", "红楼梦"], "q3": ["北京"], "q4": ["上海"]}
    predictions = {"q1": "1990年", "q2": "红楼梦", "q3": "在北京市", "other": "ignored"}
    scores = cmrc_scores(predictions, answers)
    em, f1 = 100 * 1 / 4, 100 * (0.8 + 1 + 2 / 3) / 4  # q4 missing: 0 in both
    assert scores["exact_match"] == pytest.approx(em)
    assert scores["f1"] == pytest.approx(f1)
    assert scores["average"] == pytest.approx((em + f1) / 2)
    assert scores["missing"] == 1


def test_cmrc_scores_errors():
    with pytest.raises(DataError, match="no questions"):
        cmrc_scores({}, {})
    with pytest.raises(DataError, match="question 'q' needs a non-empty list"):
        cmrc_scores({"q": "x"}, {"q": []})
