"""Forward hooks on decoder blocks: read the block output at the last position, stop or skip blocks.

Edits (replace, add) are applied by :func:`taskvec.engine.interventions.intervene`.

Every context manager removes its hooks on exit, also when the forward pass raises. A block output
is either a tensor or a tuple whose first item is the hidden state (GPT-J); both are handled.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


def hidden_of(output) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


def with_hidden(output, hidden: torch.Tensor):
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


class StopForward(Exception):
    """Raised by a hook to end a forward pass once the needed layers have run."""


@contextmanager
def registered(handles: list) -> Iterator[None]:
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def capture_last_position(
    layers: nn.ModuleList, which: list[int], store: dict[int, torch.Tensor], stop_after_last: bool = False
) -> Iterator[None]:
    """Record ``store[l]`` = output of block ``l`` at the last position (B, H), for each ``l`` in ``which``.

    With ``stop_after_last`` the forward pass is cut short by :class:`StopForward` after the deepest
    block in ``which``; the caller catches it.
    """
    deepest = max(which)

    def make(index: int):
        def hook(module, args, output):
            store[index] = hidden_of(output)[:, -1, :].detach()
            if stop_after_last and index == deepest:
                raise StopForward

        return hook

    handles = [layers[i].register_forward_hook(make(i)) for i in which]
    with registered(handles):
        yield


@contextmanager
def skip_blocks(layers: nn.ModuleList, upto: int, arity: int | None) -> Iterator[None]:
    """Make blocks ``0..upto`` pass their input hidden state through unchanged (no compute, no cache update).

    Used with a patch at block ``upto``, whose output at the (only) position is replaced anyway. ``arity``
    is how the blocks return: None for a tensor, n for a tuple of n items with the hidden state first.
    """

    def passthrough(*args, **kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        return hidden if arity is None else (hidden, *([None] * (arity - 1)))

    saved = [(block, block.__dict__.get("forward")) for block in layers[: upto + 1]]
    for block, _ in saved:
        block.forward = passthrough
    try:
        yield
    finally:
        for block, original in saved:
            if original is None:
                del block.forward
            else:
                block.forward = original
