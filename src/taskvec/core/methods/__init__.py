"""The methods: each turns demonstrations into vectors and says how a vector is applied.

Adding a method: a module here with a class that implements :class:`taskvec.core.interfaces.Method`
(``name``, ``acts``, ``operation``, ``vectors``, ``edits``, ``settings`` and a ``from_settings`` class method),
and the class in :data:`METHOD_CLASSES` (with a short alias in :data:`ALIASES`). Everything else (experiments,
API, CLI, files) finds a method by the name recorded in a file or a configuration: :func:`method_for`.
"""

from __future__ import annotations

import torch

from taskvec.core.interfaces import Method
from taskvec.core.methods.function_vector import FunctionVectorMethod
from taskvec.core.methods.in_context_vector import InContextVectorMethod
from taskvec.core.methods.mean_difference import IclShiftMethod, MeanDifferenceMethod
from taskvec.core.methods.task_vector import TaskVectorMethod
from taskvec.core.sites import Edit
from taskvec.errors import TaskvecError

TASK_VECTOR = TaskVectorMethod()
METHOD_CLASSES: dict[str, type] = {
    cls.name: cls
    for cls in (TaskVectorMethod, FunctionVectorMethod, InContextVectorMethod, MeanDifferenceMethod, IclShiftMethod)
}
METHODS: dict[str, Method] = {TASK_VECTOR.name: TASK_VECTOR}
METHOD_NAMES = tuple(METHOD_CLASSES)
ALIASES = {"tv": TaskVectorMethod.name, "fv": FunctionVectorMethod.name, "icv": InContextVectorMethod.name,
           "meandiff": MeanDifferenceMethod.name, "shift": IclShiftMethod.name}  # fmt: skip
#: Methods that act at every position of each layer of a range (the others: one layer, the last prompt token).
EVERY_POSITION = tuple(name for name, cls in METHOD_CLASSES.items() if cls.acts == "every")

__all__ = ["ALIASES", "EVERY_POSITION", "METHODS", "METHOD_CLASSES", "METHOD_NAMES", "TASK_VECTOR",
           "FunctionVectorMethod", "IclShiftMethod", "InContextVectorMethod", "MeanDifferenceMethod",
           "TaskVectorMethod", "acting_layers", "edits_at", "get_method", "method_for", "method_name",
           "parse_methods"]  # fmt: skip


def method_name(name: str) -> str:
    """The full name of a method given by its name or alias."""
    full = ALIASES.get(name, name)
    if full not in METHOD_CLASSES:
        raise TaskvecError(f"unknown method {name!r}; expected one of "
                           f"{', '.join(f'{a} ({n})' for a, n in ALIASES.items())}")  # fmt: skip
    return full


def method_for(name: str, settings: dict | None = None) -> Method:
    """The method recorded as ``name`` (a full name or an alias), configured by ``settings`` (what its
    ``settings()`` returned, e.g. from a vector file), ready to apply a vector."""
    return METHOD_CLASSES[method_name(name)].from_settings(dict(settings or {}))


def get_method(name: str) -> Method:
    """A method with its default settings."""
    return method_for(name)


def acting_layers(method: Method, num_layers: int, layer: int | None = None) -> list[int]:
    """The layers a method's vector acts at: ``layer`` for a last-position method; for an every-position
    method its range (all layers by default), or only ``layer`` when one is given."""
    if layer is not None:
        return [int(layer)]
    if method.acts == "last":
        raise TaskvecError(f"no layer given for a {method.name}; it acts at one layer: pass layer=...")
    chosen = getattr(method, "layers", None)
    return list(range(num_layers)) if chosen is None else [int(x) for x in chosen]


def edits_at(method: Method, vectors: torch.Tensor, layer: int | None = None) -> list[Edit]:
    """Every edit of a vector stack ``vectors`` (num_layers, H): the method's edits at each layer it acts at."""
    return [e for at in acting_layers(method, vectors.shape[0], layer) for e in method.edits(at, vectors[at])]


def parse_methods(spec: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """Method names from ``"tv,fv"`` (aliases or full names), in :data:`METHOD_NAMES` order, the task vector
    always included (the other methods are compared with it)."""
    items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    names = set()
    for item in items:
        if ALIASES.get(item, item) not in METHOD_CLASSES:
            raise TaskvecError(f"unknown method {item!r}; expected a comma-separated list of "
                               f"{', '.join(f'{a} ({n})' for a, n in ALIASES.items())}")  # fmt: skip
        names.add(method_name(item))
    if not names:
        raise TaskvecError(f"--methods {spec!r} names no method; expected e.g. tv or tv,fv")
    names.add(TaskVectorMethod.name)
    return tuple(n for n in METHOD_NAMES if n in names)
