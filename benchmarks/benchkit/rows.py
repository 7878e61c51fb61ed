"""One result row: what the table shows (two figures, the ratio, the limit, the goal, quiet rounds).

A row's status is "ok", "failed" (its check failed, so it was not timed, or the run raised),
"not available" (the code under test lacks the feature) or "skipped" (excluded by the run's options).
Ratios are the reference's time over plmkit's: > 1 means plmkit is faster.
"""

from __future__ import annotations

from benchkit import rounds as R


def row(section: str, name: str, **fields) -> dict:
    return {"section": section, "name": name, "status": "ok", **fields}


def not_timed(section: str, name: str, status: str, reason: str, **fields) -> dict:
    return {"section": section, "name": name, "status": status, "reason": reason, **fields}


def timed(
    section: str,
    name: str,
    comparison_id: str,
    comparison: dict,
    ours: str,
    reference: str,
    unit: str,
    per_call: float = 1.0,
    **fields,
) -> dict:
    """A row from an interleaved comparison: `ours` against `reference`, in `unit` (seconds per call
    times 1000 / per_call, e.g. ms per token with per_call = tokens per call)."""
    rounds = comparison["rounds"]
    t_ours, t_ref = R.seconds(rounds, ours), R.seconds(rounds, reference)
    ratio = R.ratio(rounds, reference, ours)
    fields.setdefault("reference_name", reference)
    return row(
        section,
        name,
        comparison=comparison_id,
        plmkit=None if t_ours is None else 1000 * t_ours / per_call,
        reference=None if t_ref is None else 1000 * t_ref / per_call,
        unit=unit,
        ratio=ratio,
        **fields,
    )


def goal(row_: dict, text: str, met: bool | None) -> dict:
    row_["goal"] = text
    row_["goal_met"] = met
    return row_


def ratio_at_least(row_: dict, target: float, against: str = "transformers") -> dict:
    median = (row_.get("ratio") or {}).get("median")
    return goal(row_, f">= {target:g}x {against}", None if median is None else median >= target)
