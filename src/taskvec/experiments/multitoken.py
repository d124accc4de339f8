"""Multi-token answers: the full decoded answer, task-vector variants vs regular ICL vs zero-shot.

Not the paper's protocol (it scores one token). Per task, the pairs are kept whatever the length of their
answer (:func:`prepare_task` with ``keep_multi_token``); test queries are drawn separately among answers of
one token and of several. Each query gets its own demonstrations and dummy queries (drawn from all pairs, so
demonstrations show full multi-token answers); theta is extracted from them and the same demonstrations make
the regular-ICL prompt. The layer is chosen on dev queries by the first generated token (a non-empty prefix of
an accepted answer). Every method decodes greedily up to ``max_new_tokens``.

Variants (:mod:`taskvec.core.answering`): where the vector is applied while decoding (``first``,
``every_replace``, ``every_delta``), the stop rule (``newline``, ``format``, ``demos``: the demonstrated
answers' punctuation and length, taken from all demonstrations of the group's sets) and the scale
``alpha``; ICL and zero-shot are decoded with every stop rule. Scored by exact match (the output or a listed
alternative) and token F1 (lower-cased whitespace tokens, best over accepted answers).

Prompts in other words: the task vector extracted with the paper's template is patched (at the same layer)
into queries written in other templates (``Q: x\\nA:``, ...); first-token accuracy (knowledge-style prefix
rule) shows how much of its effect survives, against zero-shot and ICL in that template.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from taskvec.core.answering import DEFAULT_MODE, DEFAULT_STOP_RULE, STOPS, step_edits, stop_rule, with_steps
from taskvec.core.decoding import decode_predictions
from taskvec.core.interfaces import Executor
from taskvec.core.layers import best_layer
from taskvec.core.methods import TASK_VECTOR
from taskvec.core.sites import PROMPT, Edit
from taskvec.experiments.every_position import ChosenConfig, EverySettings, choose_config, configured, row_edits_of
from taskvec.experiments.method_comparison import FvSettings, choose_function_vector
from taskvec.models.loading import LoadedModel
from taskvec.prompts import PromptTemplate
from taskvec.runtime import make_executor
from taskvec.stats import accuracy_entry
from taskvec.tasks.definitions import Pair, Task
from taskvec.tasks.preparation import prepare_task
from taskvec.tasks.sampling import build_sets
from taskvec.tasks.scoring import prefix_match

METHODS = ("task_vector", "regular", "zero_shot")
#: Task-vector variants measured: name -> (decoding mode, stop rule, alpha).
VARIANTS = {
    "tv_first_newline": ("first", "newline", 1.0),  # the paper's patch, the old decoding
    "tv_first_format": ("first", "format", 1.0),
    "tv_first_demos": ("first", "demos", 1.0),
    "tv_every_replace_format": ("every_replace", "format", 1.0),
    "tv_every_delta_format": ("every_delta", "format", 1.0),
    "tv_every_delta_format_a0.5": ("every_delta", "format", 0.5),
    "tv_every_delta_format_a2": ("every_delta", "format", 2.0),
}
DEFAULT_VARIANT = f"tv_{DEFAULT_MODE}_{DEFAULT_STOP_RULE}"
#: Variant name prefixes of the every-position methods.
SHORT_NAMES = {"in_context_vector": "icv", "mean_difference": "meandiff", "icl_shift": "shift"}
#: Query templates of "prompts in other words" (the demonstrations' template is the paper's).
OTHER_TEMPLATES = {
    "paper": "example:{input}->",
    "qa": "Q: {input}\nA:",
    "input_output": "Input: {input}\nOutput:",
    "arrow_spaced": "{input} =>",
}


@dataclass(frozen=True)
class MultiTokenConfig:
    shots: int = 5
    n_dummy: int = 2
    n_dev: int = 20
    n_test: int = 30  # per answer length group (one token / several), at most
    max_new_tokens: int = 10
    seed: int = 41
    batch_size: int = 32
    variants: tuple[str, ...] = tuple(VARIANTS)
    templates: tuple[str, ...] = tuple(OTHER_TEMPLATES)
    with_fv: bool = False  # also a function vector per task (chosen on the dev queries' first tokens)
    every: tuple[str, ...] = ()  # every-position methods (in_context_vector, mean_difference, icl_shift)
    extra: dict = field(default_factory=dict)


def _accepted(pair: Pair) -> set[str]:
    return {a.strip() for a in pair.accepted}


def token_f1(answer: str, pair: Pair) -> float:
    """Best F1 of the lower-cased whitespace tokens of ``answer`` against each accepted answer."""
    got = answer.lower().split()
    best = 0.0
    for gold in _accepted(pair):
        want = gold.lower().split()
        common = sum(min(got.count(t), want.count(t)) for t in set(got))
        if common:
            precision, recall = common / len(got), common / len(want)
            best = max(best, 2 * precision * recall / (precision + recall))
    return best


def f1_entry(values: Sequence[float]) -> dict:
    """Mean token F1 with a normal-approximation 95% interval (clipped to [0, 1])."""
    n = len(values)
    mean = sum(values) / n if n else 0.0
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    half = 1.96 * sd / math.sqrt(n) if n else 0.0
    return {"mean": mean, "ci95": [max(0.0, mean - half), min(1.0, mean + half)], "n": n}


def evaluate_multitoken(
    lm: LoadedModel, task: Task, config: MultiTokenConfig = MultiTokenConfig(), *, executor: Executor | None = None
) -> dict:
    """Per answer-length group: exact match and token F1 of each variant and baseline, with examples
    (``groups[g][method]``: exact match of the default variant, ICL and zero-shot with the format stop rule),
    and the first-token accuracy of the task vector in other templates. ``executor`` runs the model."""
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

    def first_tokens(predictions: list[str]) -> float:
        """Accuracy of the dev queries' first generated tokens: a non-empty prefix of an accepted answer."""
        ok = [bool(f) and any(a.startswith(f) for a in _accepted(s.query)) for f, s in zip(predictions, dev_sets)]
        return sum(ok) / max(1, len(ok))

    dev_accuracy = [first_tokens(decode_predictions(lm, ids)) for ids in sweep]
    layer = best_layer(dev_accuracy)
    fv = None
    if config.with_fv:
        fv_rng = random.Random(f"{config.seed}:{task.name}:multitoken:fv")  # the test sets do not depend on it
        chosen = choose_function_vector(executor, prepared, dev_sets, FvSettings(), fv_rng, scoring="prefix")
        fv = chosen.method.edits(chosen.fv.layer, chosen.fv.vector)

    result: dict = {"task": task.name, "layer": layer, "dev_first_token_accuracy": dev_accuracy[layer],
                    "answer_prefix": template.answer_prefix, "default_variant": DEFAULT_VARIANT,
                    "groups": {}, "templates": {}}  # fmt: skip
    if fv is not None:
        result["function_vector"] = {k: v for k, v in chosen.to_dict().items() if k != "attribution"}
    every: dict[str, ChosenConfig] = {}
    for name in config.every:  # chosen on the dev queries' first tokens, as the task vector's layer
        vectors = configured(name, 1.0).vectors(executor, template, dev_sets, all_layers)
        every[name] = choose_config(executor, name, dev_prompts, vectors, first_tokens, EverySettings())
    if every:
        result["every_position"] = {n: {k: v for k, v in c.to_dict().items() if k != "grid"} for n, c in every.items()}
    for group, queries in test_queries.items():
        if not queries:
            continue
        sets = build_sets(pairs, queries, config.shots, config.n_dummy, rng)
        thetas = TASK_VECTOR.vectors(executor, template, sets, [layer])[:, 0, :]  # once, for every variant
        answers = _answers(executor, template, sets, layer, thetas, config, fv, every)
        exact = {m: [a in _accepted(q) for a, q in zip(found, queries)] for m, found in answers.items()}
        f1 = {m: [token_f1(a, q) for a, q in zip(found, queries)] for m, found in answers.items()}
        named = {"task_vector": DEFAULT_VARIANT, "regular": "icl_format", "zero_shot": "zero_format"}
        result["groups"][group] = {
            **{m: accuracy_entry(exact[v]) for m, v in named.items()},
            "variants": {m: {"exact": accuracy_entry(exact[m]), "f1": f1_entry(f1[m])} for m in answers},
            "examples": [{"query": q.input, "gold": q.output, **{m: answers[m][i] for m in answers}}
                         for i, q in enumerate(queries)],
        }  # fmt: skip
        for name in config.templates:
            transfer = _in_other_words(executor, template, sets, layer, thetas, OTHER_TEMPLATES[name], fv)
            entry = result["templates"].setdefault(name, {"query": OTHER_TEMPLATES[name], "groups": {}})
            entry["groups"][group] = {m: accuracy_entry(ok) for m, ok in transfer.items()}
    return result


def _answers(
    executor: Executor,
    template: PromptTemplate,
    sets,
    layer: int,
    thetas: torch.Tensor,
    config: MultiTokenConfig,
    fv: list[Edit] | None = None,
    every: dict[str, ChosenConfig] | None = None,
) -> dict:
    """Decoded answers of every variant and of ICL / zero-shot under every stop rule (and, with ``fv``, the
    function vector added at the prompt's last position only, and at every generated token too; for each
    every-position method of ``every``, its edits at every position, prompt and generated tokens (its
    definition: ``<short>_all_demos``), and at prompt positions only (``<short>_prompt_demos``))."""
    prompts = [template.query_prompt(s.query.input) for s in sets]
    icl_prompts = [template.icl_prompt(s.demo_tuples, s.query.input) for s in sets]
    first = [TASK_VECTOR.edits(layer, v) for v in thetas]
    shown = [y for s in sets for _, y in s.demo_tuples]  # the demonstrated answers (for the "demos" rule)
    rules = {stop: stop_rule(stop, template, shown, executor.lm.tokenizer) for stop in STOPS}
    out: dict[str, list[str]] = {}
    for name in config.variants:
        mode, stop, alpha = VARIANTS[name]
        steps = step_edits(executor, prompts, first, mode, alpha)
        out[name] = executor.generate(prompts, config.max_new_tokens, with_steps(first, steps), rules[stop])
    if fv is not None:
        added = [fv] * len(prompts)
        out["fv_first_demos"] = executor.generate(prompts, config.max_new_tokens, added, rules["demos"])
        kept_on = with_steps(added, step_edits(executor, prompts, added, "every_replace"))
        out["fv_every_demos"] = executor.generate(prompts, config.max_new_tokens, kept_on, rules["demos"])
    for name, chosen in (every or {}).items():
        short = SHORT_NAMES.get(name, name)
        vectors = configured(name, 1.0).vectors(executor, template, sets, list(range(executor.lm.num_layers)))
        for where, position in (("all", None), ("prompt", PROMPT)):
            method = configured(name, chosen.strength, position)
            edits = row_edits_of(method, vectors, chosen.layer)
            out[f"{short}_{where}_demos"] = executor.generate(prompts, config.max_new_tokens, edits, rules["demos"])
    for stop in STOPS:
        out[f"icl_{stop}"] = executor.generate(icl_prompts, config.max_new_tokens, None, rules[stop])
        out[f"zero_{stop}"] = executor.generate(prompts, config.max_new_tokens, None, rules[stop])
    return out


def _in_other_words(
    executor: Executor,
    template: PromptTemplate,
    sets,
    layer: int,
    thetas: torch.Tensor,
    query: str,
    fv: list[Edit] | None = None,
) -> dict:
    """First-token correctness (prefix rule) in the template ``query`` of: zero-shot, ICL (demonstrations in
    that template) and the task vector extracted with the paper's template, patched at ``layer``."""
    other = PromptTemplate(query=query, separator=template.separator, answer_prefix=template.answer_prefix
                           if query == template.query else " ", input_prefix=template.input_prefix)  # fmt: skip
    lm = executor.lm
    prompts = [other.query_prompt(s.query.input) for s in sets]
    icl = [other.icl_prompt(s.demo_tuples, s.query.input) for s in sets]
    found = {
        "task_vector": executor.predict(prompts, [TASK_VECTOR.edits(layer, v) for v in thetas], short=True).ids,
        "regular": executor.predict(icl).ids,
        "zero_shot": executor.predict(prompts, short=True).ids,
    }
    if fv is not None:
        found["function_vector"] = executor.predict(prompts, [fv] * len(prompts), short=True).ids
    return {m: [any(prefix_match(p, a) for a in _accepted(s.query)) for p, s in zip(decode_predictions(lm, ids),
                                                                                        sets)]
            for m, ids in found.items()}  # fmt: skip
