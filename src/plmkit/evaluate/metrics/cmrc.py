"""CMRC 2018 exact match and F1, as defined by the official cmrc2018_evaluate.py.

Texts are lower-cased and stripped, then cut by `mixed_segmentation`; F1 comes from the longest common
*substring* (contiguous run) of the two segment lists; EM compares the texts with punctuation removed.
A question scores its best value over the gold answers; corpus scores are 100 x the mean over questions,
and `average` is their mean, the number the CMRC leaderboard ranks by.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from plmkit.errors import DataError

# The official script's list. '……' is a two-character entry: a text is walked one character at a time,
# so it never matches and '…' stays (as in the script).
PUNCTUATION = frozenset(
    ["-", ":", "_", "*", "^", "/", "\\", "~", "`", "+", "=", "，", "。", "：", "？", "！", "“", "”",
     "；", "’", "《", "》", "……", "·", "、", "「", "」", "（", "）", "－", "～", "『", "』"]
)  # fmt: skip
_CHINESE = re.compile("[\u4e00-\u9fa5]")  # the script's range: the basic CJK block up to U+9FA5
# Stand-in for nltk.word_tokenize on the non-Chinese runs: words (with inner '.' / ',' as in 3.5, 1,000,
# u.s), English clitics ('s 're 'll 've 'd 'm) and every other symbol alone.
_RUN_TOKEN = re.compile(r"\w+(?:[.,]\w+)*|'(?:s|re|ll|ve|d|m)\b|[^\w\s]")


def _split_run(run: str) -> list[str]:
    return _RUN_TOKEN.findall(run)


def mixed_segmentation(text: str, rm_punc: bool = True) -> list[str]:
    """Each Chinese character and each listed punctuation mark is its own segment; runs of other
    characters (English words, numbers) are split into words. With `rm_punc` the listed punctuation is
    dropped without ending the run it sits in ("x-ray" -> ["xray"]), as in the script.

    Differs from the official script only inside the non-Chinese runs, which it splits with
    nltk.word_tokenize and this function with a regular expression: nltk keeps a trailing abbreviation
    period ("u.s." -> ["u.s."], here ["u.s", "."]), splits "can't" into ["ca", "n't"] (here ["can", "'",
    "t"]), rewrites double quotes as `` and '', keeps "..." as one token (here three) and first splits
    sentences with punkt. Answers rarely hold such runs; numbers, names and units split the same way.
    """
    segments: list[str] = []
    run = ""
    for char in str(text).lower().strip():
        if rm_punc and char in PUNCTUATION:
            continue
        if _CHINESE.match(char) or char in PUNCTUATION:
            segments.extend(_split_run(run))
            run = ""
            segments.append(char)
        else:
            run += char
    segments.extend(_split_run(run))
    return segments


def remove_punctuation(text: str) -> str:
    """The lower-cased, stripped text without the listed punctuation (the script's EM normalization)."""
    return "".join(char for char in str(text).lower().strip() if char not in PUNCTUATION)


def longest_common_substring(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest contiguous run shared by the two lists (the script's find_lcs)."""
    best = 0
    previous = [0] * (len(b) + 1)  # previous[j + 1]: common run ending at a[i - 1] and b[j]
    for x in a:
        current = [0] * (len(b) + 1)
        for j, y in enumerate(b):
            if x == y:
                current[j + 1] = previous[j] + 1
                best = max(best, current[j + 1])
        previous = current
    return best


def cmrc_f1(prediction: str, ground_truths: Sequence[str]) -> float:
    """Best F1 (0..1) over the golds: precision = lcs / len(prediction segments), recall = lcs /
    len(gold segments), segments from `mixed_segmentation(rm_punc=True)`."""
    prediction_segments = mixed_segmentation(prediction, rm_punc=True)
    scores = [0.0]
    for truth in ground_truths:
        truth_segments = mixed_segmentation(truth, rm_punc=True)
        common = longest_common_substring(truth_segments, prediction_segments)
        if common:
            precision = common / len(prediction_segments)
            recall = common / len(truth_segments)
            scores.append(2 * precision * recall / (precision + recall))
    return max(scores)


def cmrc_exact_match(prediction: str, ground_truths: Sequence[str]) -> bool:
    """Whether the prediction equals a gold once both are lower-cased and stripped of punctuation."""
    cleaned = remove_punctuation(prediction)
    return any(remove_punctuation(truth) == cleaned for truth in ground_truths)


def cmrc_scores(predictions: Mapping[str, str], answers: Mapping[str, Sequence[str]]) -> dict:
    """{exact_match, f1, average} in 0..100 over the questions of `answers` (question id -> gold answer
    texts), and `missing`: questions without a prediction (each scores 0, counted in the total, as the
    script does). Predictions for ids not in `answers` are ignored."""
    if not answers:
        raise DataError("cmrc: no questions to score; give at least one question id with its gold answers")
    exact = f1 = 0.0
    missing = 0
    for qid, golds in answers.items():
        if isinstance(golds, str) or not golds:
            raise DataError(
                f"cmrc: question {qid!r} needs a non-empty list of gold answer texts, got {golds!r}"
            )
        if qid not in predictions:
            missing += 1
            continue
        exact += cmrc_exact_match(predictions[qid], golds)
        f1 += cmrc_f1(predictions[qid], golds)
    em_score, f1_score = 100.0 * exact / len(answers), 100.0 * f1 / len(answers)
    return {
        "exact_match": em_score,
        "f1": f1_score,
        "average": (em_score + f1_score) * 0.5,
        "missing": missing,
    }
