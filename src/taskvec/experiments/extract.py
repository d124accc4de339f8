"""``taskvec extract``: a task's demonstrations -> one task vector file, its layer chosen on held-out pairs.

The task's pairs (one-token answers for this model, the paper's protocol) are shuffled with the seed;
up to ``n_dev`` of them are held out as dev queries, the rest form the pool that the ``n_sets``
demonstration sets (``shots`` demonstrations + ``n_dummy`` dummy queries each, all distinct) are drawn
from. theta is averaged over the sets and their dummy queries. With ``layer=None`` ("auto") the layer is
the first one of best dev accuracy in a sweep over all layers; the dev accuracy is recorded either way.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from taskvec.api.extraction import Demonstrations, extract_task_vector
from taskvec.api.sweep import layer_sweep
from taskvec.api.task_vector import TaskVector
from taskvec.core.interfaces import Executor
from taskvec.core.layers import best_index
from taskvec.core.methods import METHOD_CLASSES, FunctionVectorMethod, method_name
from taskvec.engine.forward import check_layers
from taskvec.errors import TaskDataError, TaskvecError
from taskvec.experiments.extract_fv import extract_every_position, extract_function_vector
from taskvec.models.loading import LoadedModel
from taskvec.runtime import make_executor
from taskvec.tasks.definitions import Pair, Task
from taskvec.tasks.preparation import prepare_task
from taskvec.tasks.protocol import PromptProtocol
from taskvec.tasks.scoring import is_correct

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExtractConfig:
    shots: int = 5
    n_sets: int = 1
    n_dummy: int = 2
    n_dev: int = 20
    layer: int | None = None  # None: choose by the dev sweep
    seed: int = 0
    method: str = "task_vector"  # a name of core.methods.METHOD_CLASSES (or an alias)
    fv_prompts: int = 25  # function vector: clean and shuffled-label prompts for the head attribution
    attribution: str = "exact"  # function vector: head effects by patched forwards, or "gradient"
    prompt: PromptProtocol = field(default_factory=PromptProtocol)  # beyond the paper's (model: prompt.applied)

    def __post_init__(self) -> None:
        object.__setattr__(self, "method", method_name(self.method))  # a clear error for an unknown one
        for name in ("shots", "n_sets", "n_dummy", "n_dev"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < (0 if name == "n_dev" else 1):
                raise TaskvecError(f"{name} must be an integer >= {0 if name == 'n_dev' else 1}, got {value!r}")

    def minimum_pairs(self) -> int:
        """Pairs needed: one set's demonstrations and dummy queries, all distinct, and one dev query."""
        return self.shots + self.n_dummy + 1


def split_pairs(lm: LoadedModel, task: Task, config: ExtractConfig):
    """The prepared task, the seeded generator, the held-out dev pairs and the pool of the rest."""
    if config.layer is not None:
        check_layers(lm, [config.layer])
    prepared = prepare_task(lm, task, prompt=config.prompt)
    pairs = list(prepared.pairs)
    need = config.minimum_pairs()
    if len(pairs) < need:
        raise TaskDataError(
            f"task {task.name!r} has {len(pairs)} usable pairs (answers of one token for this model, out of "
            f"{len(task.pairs)}); --shots {config.shots} with --n-dummy {config.n_dummy} and one held-out dev pair "
            f"need at least {need}"
        )
    rng = random.Random(f"{config.seed}:{task.name}")
    rng.shuffle(pairs)
    n_dev = max(1, min(config.n_dev, len(pairs) - config.shots - config.n_dummy))
    return prepared, rng, pairs[:n_dev], pairs[n_dev:]


def draw_sets(rng: random.Random, pool: Sequence[Pair], config: ExtractConfig) -> list[Demonstrations]:
    """``n_sets`` demonstration sets drawn from ``pool``: ``shots`` demonstrations and ``n_dummy`` dummy queries
    each, all distinct."""
    sets = []
    for _ in range(config.n_sets):
        chosen = rng.sample(list(pool), config.shots + config.n_dummy)
        sets.append(Demonstrations([(p.input, p.output) for p in chosen[: config.shots]],
                                   tuple(p.input for p in chosen[config.shots :])))  # fmt: skip
    return sets


def extract_for_task(
    lm: LoadedModel,
    task: Task,
    config: ExtractConfig,
    progress: Callable[[int], None] | None = None,
    *,
    executor: Executor | None = None,
) -> TaskVector:
    """A task vector of ``task`` on ``lm`` with its layer and dev accuracy in the metadata. ``executor`` runs
    the model (default: the fast one)."""
    executor = executor or make_executor(lm, "fast")
    prepared, rng, dev, pool = split_pairs(lm, task, config)
    if config.method == FunctionVectorMethod.name:  # chosen from head attribution on the pool (heads/)
        return extract_function_vector(lm, prepared, config, dev, pool, executor)
    sets = draw_sets(rng, pool, config)
    if METHOD_CLASSES[config.method].acts == "every":
        return extract_every_position(lm, prepared, config, dev, sets, executor)
    pairs = list(prepared.pairs)
    vectors = []
    for k, demo_set in enumerate(sets):
        vectors.append(
            extract_task_vector(
                lm, demo_set.demo_tuples, list(demo_set.dummies), template=prepared.template, executor=executor,
                single_token_answers=prepared.single_token_answers,
            )
        )  # fmt: skip
        if progress is not None:
            progress(k + 1)
    theta = TaskVector.mean(vectors) if len(vectors) > 1 else vectors[0]
    layers = list(range(lm.num_layers)) if config.layer is None else [config.layer]
    sweep = layer_sweep(lm, theta, [p.input for p in dev], layers=layers, executor=executor)
    accuracy = [sum(is_correct(p, d, task.scoring) for p, d in zip(row, dev)) / len(dev) for row in sweep.predictions]
    best = best_index(accuracy)
    theta.layer = layers[best]
    theta.metadata.update(
        task=task.name,
        task_source=task.source,
        scoring=task.scoring,
        shots=config.shots,
        n_sets=config.n_sets,
        n_dummy=config.n_dummy,
        seed=config.seed,
        layer_selection="auto" if config.layer is None else "given",
        dev_inputs=[p.input for p in dev],
        dev_accuracy=accuracy[best],
        dev_accuracy_by_layer=accuracy if config.layer is None else None,
        n_usable_pairs=len(pairs),
    )
    logger.info("task %s: layer %d, dev accuracy %.2f on %d held-out pairs", task.name, theta.layer, accuracy[best],
                len(dev))  # fmt: skip
    return theta
