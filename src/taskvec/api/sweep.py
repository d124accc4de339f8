"""The layer sweep of a vector file: its answers to queries with the vector applied at each layer, the way its
method applies it (a task vector replaces, a function vector adds, an every-position method acts at that one
layer only)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from taskvec.api.compat import VectorsWithMetadata, check_compatible
from taskvec.api.patching import template_of, vector_method
from taskvec.core.decoding import decode_predictions
from taskvec.core.interfaces import Executor
from taskvec.core.layers import best_layer
from taskvec.engine.forward import check_layers
from taskvec.engine.validation import check_queries
from taskvec.errors import TaskvecError
from taskvec.models.loading import LoadedModel
from taskvec.prompts import PromptTemplate
from taskvec.runtime import make_executor


@dataclass
class SweepResult:
    """Predictions (and accuracy when answers were given) of a task vector at each layer."""

    layers: list[int]
    predictions: list[list[str]]  # [layer index][query index]
    accuracy: list[float] | None = None

    @property
    def best_layer(self) -> int | None:
        """The layer with the best accuracy, the first one on ties."""
        return None if self.accuracy is None else best_layer(self.accuracy, self.layers)


def layer_sweep(
    lm: LoadedModel,
    task_vector: VectorsWithMetadata,
    queries: Sequence[str],
    answers: Sequence[str] | None = None,
    *,
    layers: Sequence[int] | None = None,
    template: PromptTemplate | None = None,
    executor: Executor | None = None,
) -> SweepResult:
    """Apply ``task_vector`` at each layer (as its method does: the file's ``method``) to each query; score
    against ``answers`` (exact match of the
    stripped answer; experiments score with their task's rule on :attr:`SweepResult.predictions`)."""
    check_compatible(lm, task_vector)
    queries = check_queries(queries)
    if answers is not None and len(answers) != len(queries):
        raise TaskvecError(f"got {len(queries)} queries but {len(answers)} answers; expected one answer per query")
    template = template or template_of(task_vector)
    layers = check_layers(lm, range(lm.num_layers) if layers is None else layers)
    prompts = [template.query_prompt(q) for q in queries]
    vectors = task_vector.vectors.unsqueeze(0).expand(len(prompts), -1, -1)
    executor = executor or make_executor(lm, "fast")
    ids = executor.sweep(prompts, vectors, layers, vector_method(task_vector))
    predictions = [decode_predictions(lm, row) for row in ids]
    accuracy = None
    if answers is not None:
        gold = [a.strip() for a in answers]
        accuracy = [sum(p == g for p, g in zip(row, gold)) / len(gold) for row in predictions]
    return SweepResult(layers=layers, predictions=predictions, accuracy=accuracy)
