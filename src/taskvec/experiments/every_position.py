"""Every-position methods (In-Context Vectors, mean difference, ICL shift) in the comparison run, for one task.

Each test set's vector is made from its own demonstrations (as the task vector is) at every layer. On the dev
sets, the method's strength (ICV's lambda, the mean difference's scale) and where it acts are chosen by the
task's scoring rule: at every layer (the methods' definition) with each strength of the "all layers" grid,
and at single layers — every layer at the middle strength of the "one layer" grid, then the best
``refine_layers`` layers at every strength of it; the first best configuration wins (all layers before
single ones, lower layers first). Then on the test sets: the method, a random vector of the same norm at
every layer applied the same way, and shuffled-label ICL with the method's vector (the task-agnostic control
is computed after all tasks, :mod:`taskvec.experiments.task_agnostic`).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch

from taskvec.core.decoding import decode_predictions
from taskvec.core.interfaces import Executor, Method
from taskvec.core.methods import METHOD_CLASSES, edits_at, method_for
from taskvec.engine.accounting import stage
from taskvec.heads.function_vector import random_same_norm
from taskvec.tasks.preparation import PreparedTask
from taskvec.tasks.sampling import EvalSet

#: Strengths tried on dev per method: (at every layer, at one layer).
STRENGTHS = {
    "in_context_vector": ((0.003, 0.01, 0.03, 0.1, 0.3), (0.1, 0.3, 1.0)),
    "mean_difference": ((0.01, 0.03, 0.1, 0.3, 1.0), (0.5, 1.0, 2.0, 4.0)),
    "icl_shift": ((0.01, 0.03, 0.1, 0.3, 1.0), (0.5, 1.0, 2.0, 4.0)),
}


@dataclass(frozen=True)
class EverySettings:
    """How an every-position method's configuration is searched on dev."""

    single_layers: bool = True  # also try each layer alone (else: every layer only, the methods' definition)
    refine_layers: int = 3

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ChosenConfig:
    """The configuration chosen on dev: strength, the layer (None: every layer), and the dev grid."""

    name: str
    strength: float
    layer: int | None
    dev_accuracy: float
    grid: list[dict]

    def method(self) -> Method:
        return configured(self.name, self.strength)

    def to_dict(self) -> dict:
        return {"method": self.name, "strength": self.strength, "layer": self.layer,
                "dev_accuracy": self.dev_accuracy, "grid": self.grid}  # fmt: skip


def configured(name: str, strength: float, position: int | str | None = None) -> Method:
    """Method ``name`` with ``strength`` in its own setting (ICV: strength; mean difference: scale)."""
    settings = {METHOD_CLASSES[name].strength_setting: strength}
    if position is not None:
        settings["position"] = position
    return method_for(name, settings)


def row_edits_of(method: Method, vectors: torch.Tensor, layer: int | None) -> list[list]:
    """Each row's edits: ``vectors[i]`` (num_layers, H) applied at ``layer`` or at every layer."""
    return [edits_at(method, v, layer) for v in vectors]


def choose_config(
    executor: Executor,
    name: str,
    prompts: Sequence[str],
    vectors: torch.Tensor,
    score: Callable[[list[str]], float],
    settings: EverySettings,
    fixed_layer: int | None = None,
) -> ChosenConfig:
    """The dev search of the module docstring over ``vectors`` (dev sets, num_layers, H); with ``fixed_layer``
    only the one-layer strengths at that layer."""
    every, single = STRENGTHS[name]
    grid: list[dict] = []

    def trials(configs: list[tuple[float, int | None]]) -> None:
        """Score every configuration: all their rows in one request (the executor batches them)."""
        if not configs:
            return
        edits = [e for strength, layer in configs for e in row_edits_of(configured(name, strength), vectors, layer)]
        ids = executor.predict(list(prompts) * len(configs), edits, short=True).ids
        for k, (strength, layer) in enumerate(configs):
            predictions = decode_predictions(executor.lm, ids[k * len(prompts) : (k + 1) * len(prompts)])
            grid.append({"layer": layer, "strength": strength, "dev_accuracy": score(predictions)})

    if fixed_layer is not None:
        trials([(strength, fixed_layer) for strength in single])
    else:
        first = [(strength, None) for strength in every]
        middle = single[len(single) // 2]
        if settings.single_layers:
            first += [(middle, layer) for layer in range(executor.lm.num_layers)]
        trials(first)
        if settings.single_layers:
            ranked = sorted((g for g in grid if g["layer"] is not None), key=lambda g: (-g["dev_accuracy"], g["layer"]))
            trials([(strength, g["layer"]) for g in ranked[: settings.refine_layers] for strength in single
                    if strength != middle])  # fmt: skip
    best = max(grid, key=lambda g: g["dev_accuracy"])  # the first of the best
    return ChosenConfig(name, best["strength"], best["layer"], best["dev_accuracy"], grid)


def evaluate_every_position(
    executor: Executor,
    prepared: PreparedTask,
    dev: Sequence[EvalSet],
    test: Sequence[EvalSet],
    names: Sequence[str],
    settings: EverySettings,
    rng: random.Random,
    shuffled_prompts: Sequence[str],
    score: Callable[[list[str]], float],
    run: Callable[[str, list[str], list, int | None, bool], dict],
) -> tuple[dict, dict, dict, dict[str, torch.Tensor]]:
    """For each method of ``names``: (methods entries, controls entries, chosen configurations, each method's
    vector averaged over the dev sets (num_layers, H), for the task-agnostic control). ``score``: accuracy of
    predictions for the dev queries; ``run(name, prompts, edits, layer, short)`` predicts, scores, records the
    rows and returns the entry."""
    lm, template = executor.lm, prepared.template
    layers = list(range(lm.num_layers))
    dev_prompts = [template.query_prompt(s.query.input) for s in dev]
    queries = [template.query_prompt(s.query.input) for s in test]

    methods, controls, chosen, means = {}, {}, {}, {}
    for name in names:
        base = configured(name, 1.0)
        with stage(f"{name}_dev"):
            dev_vectors = base.vectors(executor, template, dev, layers)
            config = choose_config(executor, name, dev_prompts, dev_vectors, score, settings)
        chosen[name], means[name] = config, dev_vectors.mean(0)
        method = config.method()
        with stage(f"{name}_test"):
            vectors = base.vectors(executor, template, test, layers)
            methods[name] = run(name, queries, row_edits_of(method, vectors, config.layer), config.layer, True)
        with stage("controls"):
            seed = rng.randrange(2**31)
            noise = torch.stack([random_same_norm(v, seed + i) for i, v in enumerate(vectors)])
            controls[f"{name}_random"] = run(f"{name}_random", queries, row_edits_of(method, noise, config.layer),
                                             config.layer, True)  # fmt: skip
            controls[f"shuffled_icl+{name}"] = run(f"shuffled_icl+{name}", list(shuffled_prompts),
                                                   row_edits_of(method, vectors, config.layer), config.layer,
                                                   False)  # fmt: skip
    return methods, controls, {n: c.to_dict() for n, c in chosen.items()}, means
