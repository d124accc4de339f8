"""How the model is run: executors behind one interface (:class:`taskvec.core.interfaces.Executor`).

``plain``: every prompt whole, the model's own logits (the reference). ``fast``: shared demonstration
prefixes, the cached layer sweep, the vocabulary shortlist and, with mixed precision, close calls
recomputed in float32. Choose one explicitly with :func:`make_executor`.
"""

from __future__ import annotations

from taskvec.core.interfaces import Executor
from taskvec.engine.close_calls import DEFAULT_RECHECK_MARGIN
from taskvec.engine.forward import DEFAULT_BATCH_SIZE
from taskvec.errors import TaskvecError
from taskvec.models.loading import LoadedModel
from taskvec.runtime.fast import FastExecutor
from taskvec.runtime.plain import PlainExecutor

EXECUTORS = ("fast", "plain")


def make_executor(
    lm: LoadedModel,
    kind: str = "fast",
    batch_size: int = DEFAULT_BATCH_SIZE,
    *,
    recheck_margin: float | None = DEFAULT_RECHECK_MARGIN,
) -> Executor:
    """An executor of ``kind`` (``fast`` or ``plain``) for ``lm``. ``recheck_margin``: see
    :class:`FastExecutor` (the plain executor recomputes nothing)."""
    if kind == "fast":
        return FastExecutor(lm, batch_size, recheck_margin=recheck_margin)
    if kind == "plain":
        return PlainExecutor(lm, batch_size)
    raise TaskvecError(f"unknown executor {kind!r}; expected one of {', '.join(EXECUTORS)}")


__all__ = ["EXECUTORS", "FastExecutor", "PlainExecutor", "make_executor"]
