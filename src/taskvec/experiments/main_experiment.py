"""The paper's main experiment for one task: dev layer sweep, then Regular / Hypothesis / Baseline on test."""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass, field

import torch

from taskvec.engine.accounting import stage
from taskvec.engine.close_calls import DEFAULT_RECHECK_MARGIN, recheck_patched, recheck_plain
from taskvec.engine.extraction import group_means, mean_states
from taskvec.engine.forward import decode_predictions, predict_token_ids
from taskvec.engine.patching import patched_token_ids
from taskvec.engine.prompts import PromptTemplate
from taskvec.engine.shared_prefix import run_prompt_groups
from taskvec.engine.sweep import sweep_token_ids
from taskvec.models.loading import LoadedModel
from taskvec.models.precision import MIXED
from taskvec.models.registry import DEFAULT_MODEL
from taskvec.stats import accuracy_entry
from taskvec.tasks.definitions import Pair
from taskvec.tasks.preparation import PreparedTask
from taskvec.tasks.protocol import protocol_record
from taskvec.tasks.registry import PAPER_TASKS
from taskvec.tasks.sampling import EvalSet, draw_splits
from taskvec.tasks.scoring import is_correct


@dataclass(frozen=True)
class MainConfig:
    """The protocol of a run; the defaults are the paper's."""

    model: str = DEFAULT_MODEL
    tasks: tuple[str, ...] = PAPER_TASKS
    task_files: tuple[str, ...] = ()
    shots: int = 5
    n_dev: int = 50
    n_test: int = 50
    n_baseline: int = 100
    n_dummy: int = 2
    seed: int = 41
    dtype: str = "float32"
    batch_size: int | str = 32  # ICL prompts per forward, or "auto" (the runner halves it on out-of-memory errors)
    recheck_margin: float = DEFAULT_RECHECK_MARGIN  # dtype "mixed" only: test close calls redone in float32
    extra: dict = field(default_factory=dict)
    protocol: dict = field(default_factory=protocol_record)  # prompt/scoring choices (tasks.protocol)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["tasks"], d["task_files"] = list(self.tasks), list(self.task_files)
        if self.dtype != MIXED:
            del d["recheck_margin"]  # meaningless without mixed precision
        return d


SHORT_PROMPTS_PER_SLOT = 4  # bare query prompts per forward, per unit of batch_size
TEST_SETS_PER_SLOT = 2  # test sets per shared-prefix chunk, per unit of batch_size (the paper's 50 in one chunk)


def task_rng(seed: int, task_name: str) -> random.Random:
    """One generator per task, so a task's samples do not depend on which tasks ran before it."""
    return random.Random(f"{seed}:{task_name}")


def _rows(
    task: str, split: str, method: str, layer, prompts, sets_or_pairs, predictions, correct, rechecked=None
) -> list[dict]:
    """Per-example rows; ``rechecked`` (mixed precision) marks close calls recomputed in float32."""
    rows = []
    for i, (prompt, item, pred, ok) in enumerate(zip(prompts, sets_or_pairs, predictions, correct)):
        pair = item.query if isinstance(item, EvalSet) else item
        rows.append({"task": task, "split": split, "method": method, "set": i, "layer": layer, "prompt": prompt,
                     "query": pair.input, "gold": pair.output, "prediction": pred, "correct": ok})  # fmt: skip
        if rechecked is not None:
            rows[-1]["rechecked"] = bool(rechecked[i])
    return rows


def set_vectors(
    lm: LoadedModel,
    template: PromptTemplate,
    sets: list[EvalSet],
    layers: list[int],
    batch_size: int,
    shared_prefix: bool = True,
) -> torch.Tensor:
    """theta of each set (its demonstrations, averaged over its dummy queries) at ``layers``: (sets, layers, H)."""
    groups = [[template.icl_prompt(s.demo_tuples, d) for d in s.dummies] for s in sets]
    return mean_states(lm, groups, layers, batch_size=batch_size, shared_prefix=shared_prefix)


def dev_sweep(
    lm: LoadedModel, prepared: PreparedTask, dev: list[EvalSet], batch_size: int, shared_prefix: bool = True
) -> tuple[list[float], list[list[str]], list[list[bool]]]:
    """Each dev set's theta patched into its bare query at every layer: accuracy, predictions and
    correctness per layer (the cached sweep). Work goes to the stages dev_theta and dev_sweep.

    With mixed precision the sweep's close calls are not rechecked: it only chooses the layer, and a
    float32 theta for most dev sets would cost most of what mixed precision saves."""
    template = prepared.template
    prompts = [template.query_prompt(s.query.input) for s in dev]
    with stage("dev_theta"):
        vectors = set_vectors(lm, template, dev, list(range(lm.num_layers)), batch_size, shared_prefix)
    with stage("dev_sweep"):
        ids = sweep_token_ids(lm, prompts, vectors, max_rows=8 * batch_size)
    accuracy, predictions, correct = [], [], []
    for layer_ids in ids:
        preds = decode_predictions(lm, layer_ids)
        ok = [is_correct(p, s.query, prepared.task.scoring) for p, s in zip(preds, dev)]
        accuracy.append(sum(ok) / len(ok))
        predictions.append(preds)
        correct.append(ok)
    return accuracy, predictions, correct


def _theta_fn(lm: LoadedModel, template: PromptTemplate, sets: list[EvalSet], batch_size: int, shared: bool):
    """theta of some of ``sets`` at some layers, for :func:`recheck_patched`."""

    def theta(which: list[int], layers: list[int]) -> torch.Tensor:
        return set_vectors(lm, template, [sets[i] for i in which], layers, batch_size, shared)

    return theta


def best_layer(accuracy_by_layer: list[float]) -> int:
    """The layer with the top accuracy, the first one on ties."""
    return max(range(len(accuracy_by_layer)), key=lambda layer: (accuracy_by_layer[layer], -layer))


def _test_theta_and_icl(
    lm: LoadedModel,
    template: PromptTemplate,
    test: list[EvalSet],
    layer: int,
    batch_size: int,
    shared: bool,
    with_margins: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """theta of each test set at ``layer`` (mean over its dummy prompts), the ICL prediction of its query
    and (with ``with_margins``, else None) that prediction's margin."""
    icl_prompts = [template.icl_prompt(s.demo_tuples, s.query.input) for s in test]
    if not shared:
        vectors = set_vectors(lm, template, test, [layer], batch_size, shared_prefix=False)[:, 0, :]
        found = predict_token_ids(lm, icl_prompts, batch_size=batch_size, with_margins=with_margins)
        return vectors, *(found if with_margins else (found, None))
    dummies = [[template.icl_prompt(s.demo_tuples, d) for d in s.dummies] for s in test]
    groups = [[*d, q] for d, q in zip(dummies, icl_prompts)]  # one demonstration prefix per set
    flags = [[False] * len(d) + [True] for d in dummies]
    # One chunk of sets: suffixes of the same length across all sets share a forward (fewer, larger ones).
    out = run_prompt_groups(
        lm, groups, layers=[layer], predict=flags, batch_size=TEST_SETS_PER_SLOT * batch_size, with_margins=with_margins
    )
    is_query = torch.tensor([f for fs in flags for f in fs])
    vectors = group_means(out.states[~is_query], out.owner[~is_query], len(groups))[:, 0, :]
    return vectors, out.token_ids[is_query], None if out.margins is None else out.margins[is_query]


def evaluate_task(
    lm: LoadedModel, prepared: PreparedTask, config: MainConfig, *, shared_prefix: bool = True
) -> tuple[dict, list[dict]]:
    """Run one task through the protocol; returns its results entry and its per-example rows.

    With ``shared_prefix`` (the default) the prompts of a set that share its demonstrations (dummy-query
    prompts and the ICL prompt) run the demonstrations once; ``shared_prefix=False`` is the
    straightforward path (every prompt whole), kept as the reference the fast path is checked against.
    Work is attributed to the stages dev_theta, dev_sweep, test_theta_icl, test_tv, baseline and (mixed
    precision: close calls of the test predictions recomputed in float32, :mod:`taskvec.engine.close_calls`)
    recheck.
    """
    started = time.perf_counter()
    task, template, name = prepared.task, prepared.template, prepared.name
    rng = task_rng(config.seed, name)
    dev, test, baseline_pairs = draw_splits(
        prepared.pairs, config.shots, config.n_dev, config.n_test, config.n_baseline, config.n_dummy, rng
    )

    def score(predictions: list[str], pairs: list[Pair]) -> list[bool]:
        return [is_correct(p, pair, task.scoring) for p, pair in zip(predictions, pairs)]

    rows: list[dict] = []
    check = lm.precision == MIXED  # close calls rechecked in float32; margins cost work: only then
    bs = config.batch_size
    # Dev: sweep every layer; the best layer is the first with the top dev accuracy.
    dev_prompts = [template.query_prompt(s.query.input) for s in dev]
    dev_accuracy, dev_preds, dev_ok = dev_sweep(lm, prepared, dev, bs, shared_prefix)
    for layer, (preds, ok) in enumerate(zip(dev_preds, dev_ok)):
        rows += _rows(name, "dev", "dev_sweep", layer, dev_prompts, dev, preds, ok)
    best = best_layer(dev_accuracy)

    # Test: the task vector at the best layer, regular ICL, and the zero-shot baseline.
    test_pairs = [s.query for s in test]
    test_prompts = [template.query_prompt(p.input) for p in test_pairs]
    icl_prompts = [template.icl_prompt(s.demo_tuples, s.query.input) for s in test]
    with stage("test_theta_icl"):
        vectors, icl_ids, icl_margins = _test_theta_and_icl(lm, template, test, best, bs, shared_prefix, check)
    short = SHORT_PROMPTS_PER_SLOT * bs  # bare query prompts are several times shorter than ICL prompts
    with stage("test_tv"):
        tv = patched_token_ids(lm, test_prompts, vectors, [best] * len(test), short, with_margins=check)
    bl_prompts = [template.query_prompt(p.input) for p in baseline_pairs]
    with stage("baseline"):
        bl = predict_token_ids(lm, bl_prompts, batch_size=short, with_margins=check)
    (tv_ids, tv_margins), (bl_ids, bl_margins) = (tv, bl) if check else ((tv, None), (bl, None))
    rechecked = {}
    if check:
        margin = config.recheck_margin
        with stage("recheck"):
            theta = _theta_fn(lm, template, test, bs, shared_prefix)
            rechecked["hypothesis"] = recheck_patched(
                lm, test_prompts, tv_ids[None], tv_margins[None], [best], theta, margin, bs
            )
            plain = [(icl_prompts, icl_ids, icl_margins), (bl_prompts, bl_ids, bl_margins)]
            rechecked["regular"], rechecked["baseline"] = recheck_plain(lm, plain, margin, bs)
    tv_preds, icl_preds, bl_preds = (decode_predictions(lm, ids) for ids in (tv_ids, icl_ids, bl_ids))

    def again(method: str):
        return rechecked[method].mask.reshape(-1) if method in rechecked else None

    tv_ok, icl_ok, bl_ok = score(tv_preds, test_pairs), score(icl_preds, test_pairs), score(bl_preds, baseline_pairs)
    rows += _rows(name, "test", "hypothesis", best, test_prompts, test, tv_preds, tv_ok, again("hypothesis"))
    rows += _rows(name, "test", "regular", None, icl_prompts, test, icl_preds, icl_ok, again("regular"))
    rows += _rows(name, "test", "baseline", None, bl_prompts, baseline_pairs, bl_preds, bl_ok, again("baseline"))
    result = {
        "category": task.category,
        "description": task.description,
        "source": task.source,
        "n_pairs": len(task.pairs),
        "n_usable": prepared.n_usable,
        "answer_prefix": template.answer_prefix,
        "input_prefix": template.input_prefix,
        "regular": accuracy_entry(icl_ok),
        "hypothesis": accuracy_entry(tv_ok),
        "baseline": accuracy_entry(bl_ok),
        "best_layer": best,
        "best_layer_fraction": best / lm.num_layers,
        "dev_accuracy_by_layer": dev_accuracy,
        "seconds": round(time.perf_counter() - started, 2),
    }
    if check:
        summaries = {method: r.summary() for method, r in rechecked.items()}
        result["close_calls"] = {"margin": config.recheck_margin, **summaries}
    return result, rows
