"""Corpus BLEU (sacrebleu) and ROUGE-1 / 2 / L (Google's rouge-score) of generated text, in 0..100.

Both libraries are the `metrics` extra (`pip install 'plmkit[metrics]'`) and load only when called.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from plmkit.errors import ConfigError, DataError

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")
# CJK ideographs (basic block, extension A, compatibility) and Japanese kana: one token per character
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_ROUGE_TOKEN = re.compile(f"[a-z0-9]+|[{_CJK}]")


def _import(module: str, metric: str, package: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"{metric} needs {package}: pip install 'plmkit[metrics]'") from None


def _per_row_references(
    predictions: Sequence[str], references: Sequence[str] | Sequence[Sequence[str]]
) -> list[list[str]]:
    """[[reference, ...] per prediction]: a plain list of strings is one reference per prediction."""
    if len(predictions) != len(references):
        raise DataError(
            f"generation metrics: {len(predictions)} predictions for {len(references)} references; give one reference (or list of references) per prediction"
        )
    if not predictions:
        raise DataError(
            "generation metrics: no predictions to score; give at least one (prediction, reference) pair"
        )
    rows = [[ref] if isinstance(ref, str) else list(ref) for ref in references]
    for i, row in enumerate(rows):
        if not row:
            raise DataError(f"generation metrics: row {i} has no reference; give at least one per prediction")
    return rows


def bleu(
    predictions: Sequence[str],
    references: Sequence[str] | Sequence[Sequence[str]],
    tokenize: str = "13a",
) -> float:
    """sacrebleu's corpus BLEU (0..100) of the predictions against one reference each (a list of
    strings) or several (a list of lists, one list per prediction, all of the same length).
    `tokenize`: sacrebleu's tokenizer, "13a" (its default, WMT's mteval) or "zh" for Chinese, "char", ..."""
    sacrebleu = _import("sacrebleu", "BLEU", "sacrebleu")
    rows = _per_row_references(predictions, references)
    counts = {len(row) for row in rows}
    if len(counts) > 1:
        raise DataError(
            f"bleu: the rows have {sorted(counts)} references; sacrebleu needs the same number for every prediction"
        )
    streams = [list(stream) for stream in zip(*rows)]  # sacrebleu wants [reference k of every row]
    tokenizers = sacrebleu.metrics.bleu.BLEU.TOKENIZERS
    if tokenize not in tokenizers:
        raise ConfigError(f"bleu: tokenize={tokenize!r} is not one of sacrebleu's: {', '.join(tokenizers)}")
    return float(sacrebleu.corpus_bleu(list(predictions), streams, tokenize=tokenize).score)


class _RougeTokenizer:
    """rouge-score's default tokenization (lower case, runs of [a-z0-9], no stemming), plus one token per
    CJK character: the default drops every non-ASCII character, so Chinese would score nothing."""

    def tokenize(self, text: str) -> list[str]:
        return _ROUGE_TOKEN.findall(text.lower())


def rouge(
    predictions: Sequence[str], references: Sequence[str] | Sequence[Sequence[str]]
) -> dict[str, float]:
    """{rouge1, rouge2, rougeL}: rouge-score's F-measures (use_stemmer=False) x 100, averaged over the
    rows. Text that holds CJK characters is tokenized by character (each ideograph or kana one token,
    Latin words and numbers as rouge-score's default); other text exactly as rouge-score's default.
    With several references a row takes the best one per ROUGE type (rouge-score's score_multi)."""
    rouge_scorer = _import("rouge_score.rouge_scorer", "ROUGE", "rouge-score")
    rows = _per_row_references(predictions, references)
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=False, tokenizer=_RougeTokenizer())
    totals = dict.fromkeys(ROUGE_TYPES, 0.0)
    for prediction, refs in zip(predictions, rows):
        scores = scorer.score_multi(refs, prediction)
        for name in ROUGE_TYPES:
            totals[name] += scores[name].fmeasure
    return {name: 100.0 * total / len(rows) for name, total in totals.items()}
