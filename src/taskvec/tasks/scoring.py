"""Scoring one predicted token against a pair, per the task's rule (paper, step 5)."""

from __future__ import annotations

from taskvec.tasks.definitions import Pair


def is_correct(prediction: str, pair: Pair, scoring: str) -> bool:
    """``prediction`` is already decoded, cut at the first newline and stripped.

    exact: equals the output. alternatives: equals the output or an accepted alternative.
    prefix (knowledge tasks): a non-empty prefix of the output or an alternative, so the first
    sub-word "Hel" of "Helsinki" counts.
    """
    if scoring == "exact":
        return prediction == pair.output
    if scoring == "alternatives":
        return prediction in pair.accepted
    if scoring == "prefix":
        return bool(prediction) and any(answer.startswith(prediction) for answer in pair.accepted)
    raise ValueError(f"unknown scoring {scoring!r}")
