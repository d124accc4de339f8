"""The methods: each turns demonstrations into vectors and says how a vector is applied.

Adding a method: a module here with a class that implements :class:`taskvec.core.interfaces.Method`,
and its name in :data:`METHOD_NAMES` (with a short alias in :data:`ALIASES`). Methods that need no
setting are instances in :data:`METHODS`; the function vector is built per task from its chosen heads
(:class:`FunctionVectorMethod`).
"""

from __future__ import annotations

from taskvec.core.interfaces import Method
from taskvec.core.methods.function_vector import FunctionVectorMethod
from taskvec.core.methods.task_vector import TaskVectorMethod
from taskvec.errors import TaskvecError

TASK_VECTOR = TaskVectorMethod()
METHODS: dict[str, Method] = {TASK_VECTOR.name: TASK_VECTOR}
METHOD_NAMES = (TaskVectorMethod.name, FunctionVectorMethod.name)
ALIASES = {"tv": TaskVectorMethod.name, "fv": FunctionVectorMethod.name}

__all__ = ["ALIASES", "METHODS", "METHOD_NAMES", "TASK_VECTOR", "FunctionVectorMethod", "TaskVectorMethod",
           "get_method", "parse_methods"]  # fmt: skip


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise TaskvecError(f"unknown method {name!r}; expected one of {', '.join(METHODS)}") from None


def parse_methods(spec: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """Method names from ``"tv,fv"`` (aliases or full names), in :data:`METHOD_NAMES` order, the task vector
    always included (the other methods are compared with it)."""
    items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    names = set()
    for item in items:
        name = ALIASES.get(item, item)
        if name not in METHOD_NAMES:
            raise TaskvecError(f"unknown method {item!r}; expected a comma-separated list of "
                               f"{', '.join(f'{a} ({n})' for a, n in ALIASES.items())}")  # fmt: skip
        names.add(name)
    if not names:
        raise TaskvecError(f"--methods {spec!r} names no method; expected e.g. tv or tv,fv")
    names.add(TaskVectorMethod.name)
    return tuple(n for n in METHOD_NAMES if n in names)
