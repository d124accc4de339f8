"""``--batch-size auto``: start with a large batch and halve it whenever the accelerator runs out of memory.

The failed unit of work (one task of a run) is retried from scratch at the smaller size, and the size
stays small for the tasks after it. Results do not depend on the batch size beyond float rounding.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable
from typing import TypeVar

import torch

from taskvec.errors import TaskvecError
from taskvec.models.devices import execution_device
from taskvec.models.loading import LoadedModel

logger = logging.getLogger(__name__)

T = TypeVar("T")

AUTO = "auto"
#: First batch size tried by ``auto`` on a GPU. On the CPU PyTorch cannot report running out of memory
#: (the operating system kills the process instead), so ``auto`` uses the usual default there.
AUTO_START_GPU = 256
AUTO_START_CPU = 32


def parse_batch_size(value: int | str) -> int | str:
    """An integer >= 1 or ``"auto"``; anything else is a :class:`TaskvecError` naming the value."""
    if isinstance(value, str) and value.strip().lower() == AUTO:
        return AUTO
    try:
        size = int(value)
    except (TypeError, ValueError):
        size = 0
    if isinstance(value, bool) or size < 1 or (isinstance(value, float) and value != size):
        raise TaskvecError(f"batch size must be a whole number of at least 1 or 'auto', got {value!r}")
    return size


class BatchBackoff:
    """Runs units of work at the current batch size, halving it on ``torch.OutOfMemoryError`` when ``auto``."""

    def __init__(self, batch_size: int | str) -> None:
        batch_size = parse_batch_size(batch_size)
        self.auto = batch_size == AUTO
        self.size: int | None = None if self.auto else int(batch_size)

    def run(self, work: Callable[[int], T], what: str, lm: LoadedModel) -> T:
        """``work(batch_size)``, retried at half the size after each out-of-memory error (``auto`` only)."""
        if self.size is None:
            on_cpu = execution_device(lm.model.get_input_embeddings()).type == "cpu"
            self.size = AUTO_START_CPU if on_cpu else AUTO_START_GPU
        while True:
            try:
                return work(self.size)
            except torch.OutOfMemoryError as exc:
                _release_memory()
                if not self.auto:
                    raise TaskvecError(
                        f"{what}: out of memory at batch size {self.size}; use --batch-size auto (or a smaller "
                        "size), --dtype bfloat16, or --device auto to spread the model over GPUs and CPU"
                    ) from exc
                if self.size == 1:
                    raise TaskvecError(
                        f"{what}: out of memory even at batch size 1; use --dtype bfloat16 or --device auto"
                    ) from exc
                self.size //= 2
                logger.warning("%s: out of memory, retrying with batch size %d", what, self.size)


def _release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
