"""The protocol choices that change what a run measures, recorded in every run's configuration.

A run directory records this (``run-config.json``), so a directory written under another protocol is
never resumed under this one (``experiments.outdir.check_run_config`` refuses the mismatch).
docs/protocol.md explains each choice against the reference code's.
"""

from __future__ import annotations

from taskvec.models.adapter import FALLBACK_PREFIX

#: Bumped whenever a choice below changes the prompts, the pairs kept or the scoring.
PROTOCOL_VERSION = 2

#: How each kind of task is prepared (see :func:`taskvec.tasks.preparation.prompt_rule`).
WORD_RULE = "word"  # translation, linguistic, custom: space before input and answer when >= 70% as many stay
PLAIN_RULE = "plain"  # algorithmic: no added spaces, one-token answers
ALL_PAIRS_RULE = "all_pairs"  # prefix scoring (knowledge): every pair, no added spaces


def protocol_record(bosless_prefix: str = FALLBACK_PREFIX) -> dict:
    """The protocol as JSON-ready data; ``bosless_prefix`` is the text put before prompts of tokenizers
    that add no BOS token."""
    return {
        "version": PROTOCOL_VERSION,
        "word_tasks": "leading space on input and answer when >= 70% as many one-token answers as without",
        "knowledge_tasks": "all pairs, no added space, first token scored by prefix in either direction",
        "algorithmic_tasks": "no added spaces",
        "bosless_prefix": bosless_prefix,
        "dummy_queries": "apart from the demonstrations and the query",
        "sampling": "one generator per task seeded from (seed, task name)",
    }
