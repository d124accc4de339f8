"""Interventions as data: *where* in a forward pass (a :class:`Site`) and *what* happens there.

A site is a decoder block's output (the residual stream after block ``layer``) or, with ``head``, one
attention head's output in that block: the head's slice of the input of the attention output projection
(``o_proj`` / ``c_proj`` / ``dense`` / ``out_proj``, found from the module structure), before it is
projected and added to the residual stream. ``position`` indexes the prompt's tokens; the default ``-1``
is the last one (every prompt is left-padded, so it is the same column for all rows of a batch).

- :class:`Read` records the value at the site;
- :class:`Replace` overwrites it with a vector (the task vector: ``Replace(Site(layer), theta)``);
- :class:`Add` adds a vector to it (a function vector: ``Add(Site(layer), sum of head contributions)``).

These are plain values: a method says which ones its vector needs (:mod:`taskvec.core.methods`) and an
executor applies them (:func:`taskvec.engine.interventions.intervene`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Site:
    """Block ``layer``'s output (``head=None``) or attention head ``head``'s output in that block, at token
    ``position`` (negative: from the end; -1 is the last prompt token)."""

    layer: int
    position: int = -1
    head: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.layer, bool) or not isinstance(self.layer, int) or self.layer < 0:
            raise ValueError(f"site layer must be a non-negative integer, got {self.layer!r}")
        if self.head is not None and (isinstance(self.head, bool) or not isinstance(self.head, int) or self.head < 0):
            raise ValueError(f"site head must be None or a non-negative integer, got {self.head!r}")


@dataclass(frozen=True)
class Read:
    """Record the value at ``site``."""

    site: Site


@dataclass(frozen=True, eq=False)
class Replace:
    """Overwrite the value at ``site`` with ``value`` (hidden size, or head size for a head site)."""

    site: Site
    value: torch.Tensor


@dataclass(frozen=True, eq=False)
class Add:
    """Add ``value`` to the value at ``site``."""

    site: Site
    value: torch.Tensor


#: What changes a forward pass: one per prompt row (or None for a row left alone).
Edit = Replace | Add
Intervention = Read | Replace | Add


def replacements(layers: list[int], vectors: torch.Tensor) -> list[Edit]:
    """Row i's block output at ``layers[i]`` replaced by ``vectors[i]`` at the last position."""
    return [Replace(Site(int(layer)), vectors[i]) for i, layer in enumerate(layers)]
