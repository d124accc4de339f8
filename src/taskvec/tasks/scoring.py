"""Scoring one predicted token against a pair, per the task's rule (paper, step 5)."""

from __future__ import annotations

from taskvec.tasks.definitions import Pair


def prefix_match(prediction: str, gold: str) -> bool:
    """The reference's knowledge-task rule: after stripping, both non-empty and one a prefix of the other
    (case-sensitive). A one-token prediction "Hel" of "Helsinki" counts, and so does "Parisian" for "Paris"."""
    prediction, gold = prediction.strip(), gold.strip()
    return bool(prediction) and bool(gold) and (prediction.startswith(gold) or gold.startswith(prediction))


def is_correct(prediction: str, pair: Pair, scoring: str) -> bool:
    """``prediction`` is the decoded token, cut at the first newline (stripped here too).

    exact: equals the output. alternatives: equals the output or an accepted alternative.
    prefix (knowledge tasks): :func:`prefix_match` with the output or an alternative.
    """
    prediction = prediction.strip()
    if scoring == "exact":
        return prediction == pair.output
    if scoring == "alternatives":
        return prediction in pair.accepted
    if scoring == "prefix":
        return any(prefix_match(prediction, answer) for answer in pair.accepted)
    raise ValueError(f"unknown scoring {scoring!r}")
