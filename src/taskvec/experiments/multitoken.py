"""Multi-token answers: exact match of the full answer, task vector vs regular ICL vs zero-shot.

Not the paper's protocol (it scores one token). Per task, the pairs are kept whatever the length of their
answer (:func:`prepare_task` with ``keep_multi_token``); test queries are drawn separately among answers of
one token and of several. Each query gets its own 5 demonstrations and dummy queries (drawn from all pairs,
so demonstrations show full multi-token answers); theta is extracted from them and the same
demonstrations make the regular-ICL prompt. The layer is chosen on dev queries by the first generated
token (a non-empty prefix of an accepted answer). All three methods decode greedily up to
``max_new_tokens`` with the same stop rule (EOS or newline); an answer is correct when it equals the
output or one of its listed alternatives.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from taskvec.core.decoding import decode_predictions
from taskvec.core.interfaces import Executor
from taskvec.core.layers import best_layer
from taskvec.core.methods import TASK_VECTOR
from taskvec.models.loading import LoadedModel
from taskvec.runtime import make_executor
from taskvec.stats import accuracy_entry
from taskvec.tasks.definitions import Pair, Task
from taskvec.tasks.preparation import prepare_task
from taskvec.tasks.sampling import build_sets

METHODS = ("task_vector", "regular", "zero_shot")


@dataclass(frozen=True)
class MultiTokenConfig:
    shots: int = 5
    n_dummy: int = 2
    n_dev: int = 20
    n_test: int = 30  # per answer length group (one token / several), at most
    max_new_tokens: int = 10
    seed: int = 41
    batch_size: int = 32


def _accepted(pair: Pair) -> set[str]:
    return {a.strip() for a in pair.accepted}


def evaluate_multitoken(
    lm: LoadedModel, task: Task, config: MultiTokenConfig = MultiTokenConfig(), *, executor: Executor | None = None
) -> dict:
    """Exact-match accuracy of each method on answers of 1 token and of 2+ tokens, with examples.
    ``executor`` runs the model (default: the fast one with the config's batch size)."""
    executor = executor or make_executor(lm, "fast", config.batch_size)
    prepared = prepare_task(lm, task, keep_multi_token=True)
    template, pairs = prepared.template, prepared.pairs
    tokens = dict(zip((p.input for p in pairs), prepared.answer_tokens))
    rng = random.Random(f"{config.seed}:{task.name}:multitoken")
    groups = {"1": [p for p in pairs if tokens[p.input] == 1], "2+": [p for p in pairs if tokens[p.input] > 1]}
    test_queries = {g: rng.sample(ps, min(config.n_test, len(ps))) for g, ps in groups.items()}
    taken = {p.input for ps in test_queries.values() for p in ps}
    dev_pool = [p for p in pairs if p.input not in taken]
    dev_queries = rng.sample(dev_pool, min(config.n_dev, len(dev_pool)))

    dev_sets = build_sets(pairs, dev_queries, config.shots, config.n_dummy, rng)
    dev_prompts = [template.query_prompt(s.query.input) for s in dev_sets]
    all_layers = list(range(lm.num_layers))
    dev_vectors = TASK_VECTOR.vectors(executor, template, dev_sets, all_layers)
    sweep = executor.sweep(dev_prompts, dev_vectors, all_layers, TASK_VECTOR)
    dev_accuracy = []
    for ids in sweep:
        firsts = decode_predictions(lm, ids)
        ok = [bool(f) and any(a.startswith(f) for a in _accepted(s.query)) for f, s in zip(firsts, dev_sets)]
        dev_accuracy.append(sum(ok) / len(ok))
    layer = best_layer(dev_accuracy)

    result: dict = {"task": task.name, "layer": layer, "dev_first_token_accuracy": dev_accuracy[layer],
                    "answer_prefix": template.answer_prefix, "groups": {}}  # fmt: skip
    for group, queries in test_queries.items():
        if not queries:
            continue
        sets = build_sets(pairs, queries, config.shots, config.n_dummy, rng)
        prompts = [template.query_prompt(q.input) for q in queries]
        vectors = TASK_VECTOR.vectors(executor, template, sets, [layer])[:, 0, :]
        edits = [TASK_VECTOR.edit(layer, v) for v in vectors]
        icl_prompts = [template.icl_prompt(s.demo_tuples, s.query.input) for s in sets]
        answers = {
            "task_vector": executor.generate(prompts, config.max_new_tokens, edits),
            "regular": executor.generate(icl_prompts, config.max_new_tokens),
            "zero_shot": executor.generate(prompts, config.max_new_tokens),
        }
        correct = {m: [a in _accepted(q) for a, q in zip(answers[m], queries)] for m in METHODS}
        result["groups"][group] = {
            **{m: accuracy_entry(correct[m]) for m in METHODS},
            "examples": [{"query": q.input, "gold": q.output, **{m: answers[m][i] for m in METHODS}}
                         for i, q in enumerate(queries)],
        }  # fmt: skip
    return result
