"""The functions behind the explorer's panels: box text in, a JSON-ready result out.

``analyse`` runs one exploration: theta from the demonstrations, then for the queries the ICL, chosen method's
and zero-shot answers, the layer x query heatmap (patched answer, correct or not, probability of the gold
first token), the best layer, and theta's vocabulary projection at every layer. The method (:data:`METHODS`)
only changes the answers column and the downloadable vector: the heatmap, the best layer and the projection
are always the task vector's. Model work goes through :mod:`taskvec.explore.compute` only.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from taskvec.explore import compute
from taskvec.explore.inputs import ExploreInputError, Query, format_pairs, parse_demonstrations, parse_queries
from taskvec.models.loading import LoadedModel
from taskvec.tasks.definitions import Pair, Task
from taskvec.tasks.preparation import prepare_task
from taskvec.tasks.registry import ALL_TASKS, builtin_task
from taskvec.tasks.scoring import is_correct

logger = logging.getLogger(__name__)

TOP_K = 8  # tokens of theta's vocabulary projection listed per layer
ANSWER_CHUNK = 16  # prompts per call for the ICL and zero-shot answers (progress and cancel in between)
Report = Callable[[float, str], None]  # (fraction done, what is running); may raise Cancelled
#: The methods the answers column offers (aliases of :func:`taskvec.extract`, the page's selector lists the
#: same, the first is the default) and their labels.
METHODS = {"tv": "task vector", "fv": "function vector", "icv": "In-Context Vector", "meandiff": "mean difference"}
DEFAULT_METHOD = "tv"
#: Labels of the methods a vector file may record (full names), for the apply panel.
LABELS = {"task_vector": "task vector", "function_vector": "function vector", "in_context_vector": "In-Context Vector",
          "mean_difference": "mean difference", "icl_shift": "ICL shift"}  # fmt: skip


class Cancelled(Exception):
    """Raised by a report callback when the user cancelled the run."""


def task_catalog() -> list[dict]:
    """The built-in tasks for the task picker."""
    return [{"name": n, "category": builtin_task(n).category, "description": builtin_task(n).description}
            for n in ALL_TASKS]  # fmt: skip


def _prepared(lm: LoadedModel, name: str):
    return prepare_task(lm, builtin_task(name))


def _shuffled_pairs(lm: LoadedModel, name: str, seed: int) -> tuple[list[Pair], compute.PromptTemplate]:
    prepared = _prepared(lm, name)
    pairs = list(prepared.pairs)
    random.Random(seed).shuffle(pairs)
    return pairs, prepared.template


def task_prefill(lm: LoadedModel, name: str, seed: int = 0, shots: int = 5, n_queries: int = 10) -> dict:
    """A built-in task's demonstrations and held-out queries (with their gold answers) as box text."""
    pairs, _ = _shuffled_pairs(lm, name, seed)
    task = builtin_task(name)
    if len(pairs) < shots + 3:
        raise ExploreInputError(f"task {name!r} has only {len(pairs)} usable pairs for this model")
    demos = pairs[:shots]
    queries = pairs[shots + 2 : shots + 2 + n_queries]  # two pairs kept apart as dummy queries
    return {
        "task": name,
        "description": task.description,
        "scoring": task.scoring,
        "demonstrations": format_pairs((p.input, p.output) for p in demos),
        "queries": format_pairs((p.input, p.output) for p in queries),
    }


@dataclass
class _Setup:
    template: compute.PromptTemplate
    dummies: list[str] | None
    task: Task | None


def check_method(method: object) -> str:
    """The answers column's method: an alias of :data:`METHODS` (None or absent: the task vector)."""
    if method is None:
        return DEFAULT_METHOD
    if isinstance(method, str) and method in METHODS:
        return method
    allowed = ", ".join(f"{alias} ({label})" for alias, label in METHODS.items())
    raise ExploreInputError(f"unknown method {method!r}; expected one of {allowed}")


def _method_info(vector: compute.TaskVector) -> dict:
    """What the page says about a vector: its method (full name, the answers' key), label and where it acts."""
    method = vector.method_object()
    if vector.layer is not None:
        where = f"layer {vector.layer}"
    elif getattr(method, "layers", None) is None:
        where = "every layer"
    else:
        where = "layers " + ", ".join(map(str, method.layers))
    return {"key": vector.method, "label": LABELS.get(vector.method, vector.method.replace("_", " ")),
            "layer": vector.layer, "where": where}  # fmt: skip


def _setup(lm: LoadedModel, task_name: str | None, demos: list[tuple[str, str]], queries: list[Query]) -> _Setup:
    """The prompt template (the task's, else the paper's leading-space rule applied to the demonstrations)
    and dummy queries (task inputs apart from demonstrations and queries; none for typed tasks)."""
    if task_name:
        pairs, template = _shuffled_pairs(lm, task_name, 0)
        taken = {x for x, _ in demos} | {q.input for q in queries}
        dummies = [p.input for p in pairs if p.input not in taken][:2]
        return _Setup(template, dummies or None, builtin_task(task_name))
    typed = Task("typed", "custom", "", "exact", tuple(Pair(x, y) for x, y in demos))
    return _Setup(prepare_task(lm, typed).template, None, None)


def _score_rules(lm: LoadedModel, setup: _Setup, queries: list[Query], notices: list[str]):
    """Per query: (pair, scoring rule, gold first-token id) or None when it has no usable gold answer."""
    known = {p.input: p for p in setup.task.pairs} if setup.task else {}
    golds = [(q.input, q.gold) for q in queries if q.gold]
    tokens = iter(compute.answer_tokens(lm, setup.template, golds)) if golds else iter(())
    rules = []
    for q in queries:
        if not q.gold:
            rules.append(None)
            continue
        ids = next(tokens)
        if not ids:
            notices.append(f"query {q.input!r}: gold answer {q.gold!r} cannot be scored (it changes the query's "
                           "tokens); it is answered but not scored")  # fmt: skip
            rules.append(None)
            continue
        task_pair = known.get(q.input)
        if setup.task and task_pair is not None and task_pair.output == q.gold:
            pair, rule = task_pair, setup.task.scoring
        else:
            pair, rule = Pair(q.input, q.gold), "exact" if len(ids) == 1 else "prefix"
            if len(ids) > 1:
                notices.append(f"query {q.input!r}: gold {q.gold!r} is {len(ids)} tokens; scored by prefix, "
                               "its probability is that of its first token")  # fmt: skip
        rules.append((pair, rule, ids[0]))
    return rules


def _best_layer(correct: list[list[bool | None]], probs: list[list[float | None]], icl_agree: list[list[bool]]):
    """The layer with the best accuracy on scored queries (then the best mean gold probability, then the
    first); with no scored query, the layer agreeing most with the ICL answers."""
    scored = [j for j, c in enumerate(correct[0]) if c is not None]
    if scored:

        def key(i: int):
            mean_p = sum(probs[i][j] or 0.0 for j in scored) / len(scored)
            return (sum(bool(correct[i][j]) for j in scored), mean_p, -i)

        return max(range(len(correct)), key=key), f"accuracy on the {len(scored)} queries with a gold answer"
    best = max(range(len(icl_agree)), key=lambda i: (sum(icl_agree[i]), -i))
    return best, "agreement with the ICL answers (no gold answers given)"


def _answers(lm: LoadedModel, prompts: list[str], report: Report, span: tuple[float, float], what: str) -> list[str]:
    """Greedy answers in chunks of ``ANSWER_CHUNK`` prompts, reporting (and so allowing cancel) between."""
    out: list[str] = []
    for start in range(0, len(prompts), ANSWER_CHUNK):
        report(span[0] + (span[1] - span[0]) * start / len(prompts), what)
        out += compute.greedy_answers(lm, prompts[start : start + ANSWER_CHUNK])
    return out


def analyse(
    lm: LoadedModel,
    demonstrations: object,
    queries: object,
    task: str | None = None,
    report: Report | None = None,
    method: str | None = DEFAULT_METHOD,
) -> dict:
    """One exploration: box texts in, the panels' data out (see the module docstring). ``method``: whose
    answers fill the answers column and whose vector is downloaded (:data:`METHODS`; default: the task vector
    at the best layer; a function vector at its default layer; the others at every layer, default settings)."""
    started = time.perf_counter()
    report = report or (lambda fraction, message: None)
    method = check_method(method)
    if task is not None and task not in ALL_TASKS:
        raise ExploreInputError(f"unknown task {task!r}; pick one of the list or none")
    parsed_demos, parsed_queries = parse_demonstrations(demonstrations), parse_queries(queries)
    demos, qs = list(parsed_demos.items), list(parsed_queries.items)
    notices = [*parsed_demos.notices, *parsed_queries.notices]
    report(0.02, "preparing")
    setup = _setup(lm, task, demos, qs)
    rules = _score_rules(lm, setup, qs, notices)
    template = setup.template
    report(0.05, "extracting the task vector")
    theta = compute.extract(lm, demos, template, setup.dummies)
    vector = theta
    if method != "tv":
        report(0.10, f"extracting the {METHODS[method]}")
        vector = compute.extract_method(lm, demos, method, template, setup.dummies)
    inputs = [q.input for q in qs]
    icl = _answers(lm, [template.icl_prompt(demos, x) for x in inputs], report, (0.15, 0.25), "ICL answers")
    zero_shot = _answers(lm, [template.query_prompt(x) for x in inputs], report, (0.25, 0.30), "zero-shot answers")
    gold_ids = [r[2] if r else None for r in rules]
    grid, probs = compute.patched_grid(
        lm, theta, template, inputs, gold_ids, step=lambda f: report(0.30 + 0.6 * f, "patching theta at every layer")
    )

    def score(prediction: str, j: int) -> bool | None:
        return None if rules[j] is None else is_correct(prediction, rules[j][0], rules[j][1])

    correct = [[score(p, j) for j, p in enumerate(row)] for row in grid]
    agree = [[p == icl[j] for j, p in enumerate(row)] for row in grid]
    best, basis = _best_layer(correct, probs, agree)
    theta.layer = best
    info = _method_info(vector)
    key = info["key"]  # the answers' key: the method's full name (``task_vector`` for the task vector)
    report(0.92, "task-vector answers at the best layer" if method == "tv" else f"{info['label']} answers")
    patched = compute.apply_at(lm, vector, inputs)
    report(0.96, "vocabulary projection")
    projection = compute.layer_top_tokens(lm, theta, TOP_K)
    answers = []
    for j, q in enumerate(qs):
        row = {"query": q.input, "gold": q.gold, "icl": icl[j], key: patched[j], "zero_shot": zero_shot[j]}
        row["correct"] = {k: score(row[k], j) for k in ("icl", key, "zero_shot")}
        answers.append(row)
    scored = [j for j, r in enumerate(rules) if r is not None]
    accuracy = [sum(bool(row[j]) for j in scored) / len(scored) if scored else None for row in correct]
    theta.metadata["explore_best_layer_basis"] = basis
    return {
        "model": lm.model_id,
        "num_layers": lm.num_layers,
        "task": task,
        "template": template.to_dict(),
        "demonstrations": [list(d) for d in demos],
        "notices": notices,
        "method": {"name": method, **info},
        "answers": answers,
        "heatmap": {
            "layers": list(range(lm.num_layers)),
            "queries": inputs,
            "predictions": grid,
            "correct": correct,
            "gold_prob": probs,
            "accuracy": accuracy,
        },
        "best_layer": best,
        "best_layer_basis": basis,
        "projection": [[{"token": t, "logit": round(v, 3)} for t, v in row] for row in projection],
        "seconds": round(time.perf_counter() - started, 2),
        "_task_vector": theta,  # not JSON: the task vector of the heatmap (at the best layer)
        "_vector": vector,  # not JSON: the chosen method's vector, kept by the web layer for the download button
    }


def apply_uploaded(lm: LoadedModel, data: bytes, queries: object) -> dict:
    """A saved vector file (of any method) applied as its method applies it, a one-layer method at its stored
    layer, to typed queries (scored where a gold is given). The answers' key is ``task_vector`` whatever the
    method; ``method`` says which it is."""
    qs = list(parse_queries(queries).items)
    inputs = [q.input for q in qs]
    theta, patched, zero_shot = compute.apply_file(lm, data, inputs)
    notices: list[str] = []
    setup = _Setup(compute.template_of(theta), None, None)
    rules = _score_rules(lm, setup, qs, notices)
    rows = []
    for q, t, z, rule in zip(qs, patched, zero_shot, rules):
        correct = {
            k: None if rule is None else is_correct(v, rule[0], rule[1])
            for k, v in (("task_vector", t), ("zero_shot", z))
        }
        rows.append({"query": q.input, "gold": q.gold, "task_vector": t, "zero_shot": z, "correct": correct})
    return {
        "layer": theta.layer,
        "method": _method_info(theta),
        "model": theta.metadata.get("model_id"),
        "demonstrations": theta.metadata.get("demonstrations", []),
        "answers": rows,
        "notices": notices,
    }
