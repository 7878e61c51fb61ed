"""plmkit.data.tasks: downstream-task data — the rows of a fine-tuning recipe's train / dev / test files
under its column mapping (rows.py), and label vocabularies (labels.py). No torch is imported here."""

from __future__ import annotations

from plmkit.data.tasks.labels import LabelVocab, label_name, regression_targets
from plmkit.data.tasks.rows import Row, TaskDataConfig, TaskSplit, read_split

__all__ = [
    "LabelVocab",
    "Row",
    "TaskDataConfig",
    "TaskSplit",
    "label_name",
    "read_split",
    "regression_targets",
]
