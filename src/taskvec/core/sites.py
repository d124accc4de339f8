"""Interventions as data: *where* in a forward pass (a :class:`Site`) and *what* happens there.

A site is a decoder block's output (the residual stream after block ``layer``) or, with ``head``, one
attention head's output in that block: the head's slice of the input of the attention output projection
(``o_proj`` / ``c_proj`` / ``dense`` / ``out_proj``, found from the module structure), before it is
projected and added to the residual stream.

``position`` says which tokens: a negative integer is one prompt token counted from the prompt's end (-1,
the default, is the last prompt token: every prompt is left-padded, so it is the same column for all rows of
a batch); :data:`PROMPT` is every prompt token, :data:`GENERATED` every generated token and :data:`ALL` both.

With a key/value cache (:mod:`taskvec.engine.generation`) the rule is: an edit at prompt positions (a
negative integer, :data:`PROMPT`, the prompt part of :data:`ALL`) is made in the prefill and lives on in
the cache; an edit at generated positions (:data:`GENERATED`, the generated part of :data:`ALL`) is made on
each new token. Re-running the whole sequence (prompt + the tokens generated so far) with the same edits
gives the same next token (tested).

- :class:`Read` records the value at the site (one token: an integer position);
- :class:`Replace` overwrites it with a vector (the task vector: ``Replace(Site(layer), theta)``);
- :class:`Add` adds a vector to it (a function vector: ``Add(Site(layer), sum of head contributions)``;
  mean difference: ``Add(Site(layer, ALL), scale * delta[layer])`` at every layer);
- :class:`Steer` is In-Context Vectors' rule: the token's state, normalized, plus ``strength`` times the
  unit vector (more where the state points against it), normalized again and brought back to its own norm.

These are plain values: a method says which ones its vector needs (:mod:`taskvec.core.methods`) and an
executor applies them (:func:`taskvec.engine.interventions.intervene`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from taskvec.errors import TaskvecError

#: Every prompt token, every generated token, and both.
PROMPT, GENERATED, ALL = "prompt", "generated", "all"
NAMED_POSITIONS = (PROMPT, GENERATED, ALL)
LAST = -1


@dataclass(frozen=True)
class Site:
    """Block ``layer``'s output (``head=None``) or attention head ``head``'s output in that block, at
    ``position``: a negative integer (a prompt token from the end; -1 the last), or ``"prompt"``,
    ``"generated"`` or ``"all"``."""

    layer: int
    position: int | str = LAST
    head: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.layer, bool) or not isinstance(self.layer, int) or self.layer < 0:
            raise ValueError(f"site layer must be a non-negative integer, got {self.layer!r}")
        if self.head is not None and (isinstance(self.head, bool) or not isinstance(self.head, int) or self.head < 0):
            raise ValueError(f"site head must be None or a non-negative integer, got {self.head!r}")
        p = self.position
        if isinstance(p, str):
            if p not in NAMED_POSITIONS:
                raise ValueError(f"site position {p!r} is unknown; expected a negative integer or one of "
                                 f"{', '.join(NAMED_POSITIONS)}")  # fmt: skip
        elif isinstance(p, bool) or not isinstance(p, int) or p >= 0:
            raise ValueError(f"site position must be a negative integer (from the prompt's end) or one of "
                             f"{', '.join(NAMED_POSITIONS)}, got {p!r}")  # fmt: skip

    @property
    def one_token(self) -> bool:
        """Whether the site is one prompt token (an integer position)."""
        return isinstance(self.position, int)

    @property
    def at_generated(self) -> bool:
        """Whether the site covers generated tokens (made on each new token under a cache)."""
        return self.position in (GENERATED, ALL)


@dataclass(frozen=True)
class Read:
    """Record the value at ``site`` (a site of one token)."""

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


@dataclass(frozen=True, eq=False)
class Steer:
    """In-Context Vectors' edit (Liu et al. 2024): each token's state x becomes
    ``normalize(x/|x| + strength * (1 + max(0, cos(x, -v))) * v/|v|) * |x|``: the norm of every token is kept."""

    site: Site
    value: torch.Tensor
    strength: float


#: What changes a forward pass.
Edit = Replace | Add | Steer
EDIT_KINDS = (Replace, Add, Steer)
Intervention = Read | Replace | Add | Steer
#: A prompt row's edits: one, several, or None.
RowEdits = Edit | Sequence[Edit] | None


def row_edits(entry: RowEdits) -> tuple[Edit, ...]:
    """A row's edits as a tuple (an edit, a sequence of edits, or None)."""
    if entry is None:
        return ()
    if isinstance(entry, EDIT_KINDS):
        return (entry,)
    edits = tuple(entry)
    for edit in edits:
        if not isinstance(edit, EDIT_KINDS):
            raise TypeError(f"expected Replace, Add or Steer edits for a row, got {edit!r}")
    return edits


@dataclass(frozen=True, eq=False)
class PerPrompt:
    """A last-token variant whose edits differ from prompt to prompt: ``rows[n]`` for prompt n (e.g. each test
    set's own task vector), where a plain ``RowEdits`` variant applies the same edits to every prompt."""

    rows: tuple[RowEdits, ...]


#: One variant of :meth:`Executor.last_token`: the same edits for every prompt, or one entry per prompt.
Variant = RowEdits | PerPrompt


def variant_rows(variant: Variant, n_prompts: int) -> list[RowEdits]:
    """A variant's edits for each of ``n_prompts`` prompts."""
    if isinstance(variant, PerPrompt):
        if len(variant.rows) != n_prompts:
            raise TaskvecError(f"a per-prompt variant has {len(variant.rows)} rows of edits for {n_prompts} prompts; "
                             "expected one per prompt")  # fmt: skip
        return list(variant.rows)
    return [variant] * n_prompts


def variant_edits(variant: Variant) -> tuple[Edit, ...]:
    """Every edit of a variant, over all its prompts."""
    if isinstance(variant, PerPrompt):
        return tuple(e for row in variant.rows for e in row_edits(row))
    return row_edits(variant)


def replacements(layers: list[int], vectors: torch.Tensor) -> list[Edit]:
    """Row i's block output at ``layers[i]`` replaced by ``vectors[i]`` at the last position."""
    return [Replace(Site(int(layer)), vectors[i]) for i, layer in enumerate(layers)]


def is_last_token_replace(edits: RowEdits, layer: int) -> bool:
    """Whether a row's edits are exactly one replacement of block ``layer``'s output at the last prompt token
    (what the cached sweep computes)."""
    found = row_edits(edits)
    return len(found) == 1 and isinstance(found[0], Replace) and found[0].site == Site(layer)
