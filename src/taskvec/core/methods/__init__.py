"""The methods: each turns demonstrations into vectors and says how a vector is applied.

Adding a method: a module here with a class that implements :class:`taskvec.core.interfaces.Method`,
and one entry in :data:`METHODS`.
"""

from __future__ import annotations

from taskvec.core.interfaces import Method
from taskvec.core.methods.task_vector import TaskVectorMethod
from taskvec.errors import TaskvecError

TASK_VECTOR = TaskVectorMethod()
METHODS: dict[str, Method] = {TASK_VECTOR.name: TASK_VECTOR}


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise TaskvecError(f"unknown method {name!r}; expected one of {', '.join(METHODS)}") from None
