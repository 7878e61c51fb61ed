"""Final answers of maths word problems (GSM8K's conventions): the gold number, the number a model's text
gives, one spelling per number, and the vote of several sampled answers (self-consistency).

    gold_answer("... so 3 + 4 = <<3+4=7>>7\\n#### 1,007")   -> "1007"
    extract_strict("... The answer is 42.")                 -> "42"     (None without the phrase)
    extract_flexible("She has 5 - 3 = 2 apples.")           -> "2"      (the last number)
    normalize_number("$18.00") == normalize_number("18")    -> True
    majority_vote(["18", None, "7", "18.0"])                -> "18"

The extraction rules are lm-evaluation-harness's for GSM8K (tasks/gsm8k: gsm8k.yaml and gsm8k-cot.yaml,
their "strict-match" and "flexible-extract" filters and the exact-match cleaning of "," "$" and a final
"."); where this module departs from them it says so. No torch here.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation

from plmkit.errors import ConfigError, DataError, ShapeError

GOLD_MARK = "#### "
# strict-match: gsm8k.yaml's "#### (\-?[0-9\.\,]+)" and gsm8k-cot.yaml's "The answer is (\-?[0-9\.\,]+)."
# without its final ".": there it is an unescaped any-character, which takes the number's last digit when
# the text ends right after it ("The answer is 42" -> "4"); any other text gives the same number here.
STRICT = re.compile(r"#### (-?[0-9.,]+)|The answer is (-?[0-9.,]+)")
# flexible-extract: "(-?[$0-9.,]{2,})|(-?[0-9]+)", the last match
FLEXIBLE = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
_DIGIT = re.compile(r"[0-9]")


def clean_number(text: str) -> str:
    """lm-eval's exact-match cleaning: "," and "$" removed, then one final "." ("$1,000." -> "1000")."""
    text = text.strip().replace(",", "").replace("$", "")
    return text[:-1] if text.endswith(".") else text


def gold_answer(answer_text: str, where: str = "answer") -> str:
    """The number after the last "#### " of a GSM8K answer, commas removed ("#### 1,000" -> "1000")."""
    head, mark, tail = answer_text.rpartition(GOLD_MARK)
    number = clean_number(tail)
    if not mark or not number:
        raise DataError(
            f'{where}: a GSM8K answer ends in "#### <number>", this one does not ({answer_text[-40:]!r}); '
            "fix the row or map the answer column to the field that holds the rationale"
        )
    return number


def _matches(pattern: re.Pattern[str], text: str) -> list[str]:
    """Each match's first non-empty group (lm-eval's regex filter on alternatives), cleaned."""
    out = []
    for match in pattern.finditer(text):
        group = next((g for g in match.groups() if g), match.group(0))
        out.append(clean_number(group))
    return out


def extract_strict(text: str) -> str | None:
    """The number of the first "#### N" or "The answer is N" in `text` (whichever comes first), cleaned as
    `clean_number`; None when the text has neither (lm-eval's "[invalid]")."""
    found = [n for n in _matches(STRICT, text) if _DIGIT.search(n)]
    return found[0] if found else None


def extract_flexible(text: str) -> str | None:
    """The last number in `text` (lm-eval's flexible-extract), cleaned as `clean_number`; None when there is
    none. Unlike lm-eval, a match without a digit ("...", "$.") is not a number and is passed over."""
    found = [n for n in _matches(FLEXIBLE, text) if _DIGIT.search(n)]
    return found[-1] if found else None


def first_number(text: str) -> str | None:
    """The first number in `text` (flexible-extract's pattern): the answer cleansing of Kojima et al.
    (2022) for the answer stage of zero-shot chain of thought, which reads the first number it finds."""
    found = [n for n in _matches(FLEXIBLE, text) if _DIGIT.search(n)]
    return found[0] if found else None


def normalize_number(text: str | None) -> str | None:
    """One spelling per number, so that "18.00", "18", "$18", "18." and "+18" compare equal: after
    `clean_number`, a decimal number is written as an integer when it is one ("18.00" -> "18", "-0" ->
    "0") and otherwise without trailing zeros ("0.50" -> "0.5", ".5" -> "0.5"). Text that is not a number
    ("1.2.3") is returned cleaned; None stays None."""
    if text is None:
        return None
    cleaned = clean_number(text)
    try:
        value = Decimal(cleaned)
    except InvalidOperation:
        return cleaned
    if not value.is_finite():
        return cleaned
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def is_correct(predicted: str | None, gold: str) -> bool:
    """True when `predicted` is a number equal to `gold` (both normalized); None is never correct."""
    return predicted is not None and normalize_number(predicted) == normalize_number(gold)


def majority_vote(answers: Sequence[str | None]) -> str | None:
    """The most frequent answer (normalized, so "18" and "18.00" vote together); answers that could not be
    extracted (None) do not vote; a tie goes to the answer that occurred first; None when none voted."""
    votes = Counter(normalize_number(a) for a in answers if a is not None)  # insertion order = first seen
    if not votes:
        return None
    most = max(votes.values())
    return next(answer for answer, count in votes.items() if count == most)


def maj_at_k(answers_per_question: Sequence[Sequence[str | None]], gold: Sequence[str], k: int) -> float:
    """Accuracy (0..1) of the majority vote of the first k answers of each question (maj@k)."""
    if len(answers_per_question) != len(gold):
        raise ShapeError(
            f"maj@k: {len(answers_per_question)} questions with answers but {len(gold)} gold answers; "
            "give one list of answers per gold answer"
        )
    if k < 1:
        raise ConfigError(f"maj@k: k must be >= 1, got {k}")
    short = [i for i, answers in enumerate(answers_per_question) if len(answers) < k]
    if short:
        i = short[0]
        raise ShapeError(
            f"maj@{k}: question {i} has {len(answers_per_question[i])} sampled answers, fewer than k={k}; "
            "sample more paths or lower k"
        )
    if not gold:
        return 0.0
    hits = sum(is_correct(majority_vote(a[:k]), g) for a, g in zip(answers_per_question, gold, strict=True))
    return hits / len(gold)
