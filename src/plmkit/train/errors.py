"""Errors of the training engine (below the loop and the strategies, which both raise them)."""

from __future__ import annotations

from plmkit.errors import PlmkitError


class TrainingError(PlmkitError):
    """Training cannot continue (e.g. the loss stayed non-finite)."""
