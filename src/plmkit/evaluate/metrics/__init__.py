"""Downstream-task metrics, each equal to the reference people report (torch-free; numpy only).

- classification: accuracy, macro F1, MCC (= scikit-learn); Pearson, Spearman, MSE (= scipy), in 0..1
- sequence_labeling: entity-level P / R / F1 (= seqeval, default and strict IOB2 modes), in 0..1
- squad: EM / F1 of the official SQuAD v1.1 script, in 0..100
- cmrc: EM / F1 of the official CMRC 2018 script (mixed segmentation, LCS F1), in 0..100
- csc: Chinese spelling correction, sentence level (ReaLiSe / CCL2022-CLTC) and character level, in 0..100
- generation: BLEU (sacrebleu) and ROUGE-1/2/L (rouge-score), in 0..100; need `pip install 'plmkit[metrics]'`
"""

from __future__ import annotations

from plmkit.evaluate.metrics.classification import classification_metrics, regression_metrics
from plmkit.evaluate.metrics.cmrc import (
    cmrc_exact_match,
    cmrc_f1,
    cmrc_scores,
    mixed_segmentation,
    remove_punctuation,
)
from plmkit.evaluate.metrics.csc import csc_scores
from plmkit.evaluate.metrics.generation import bleu, rouge
from plmkit.evaluate.metrics.sequence_labeling import entity_scores, get_entities
from plmkit.evaluate.metrics.squad import exact_match_score, f1_score, normalize_answer, squad_scores

__all__ = [
    "bleu",
    "classification_metrics",
    "cmrc_exact_match",
    "cmrc_f1",
    "cmrc_scores",
    "csc_scores",
    "entity_scores",
    "exact_match_score",
    "f1_score",
    "get_entities",
    "mixed_segmentation",
    "normalize_answer",
    "regression_metrics",
    "remove_punctuation",
    "rouge",
    "squad_scores",
]
