"""The one rule that picks a layer from per-layer accuracies."""

from __future__ import annotations

from collections.abc import Sequence


def best_index(accuracy: Sequence[float]) -> int:
    """Index of the top accuracy, the first (shallowest) one on ties."""
    if not accuracy:
        raise ValueError("no accuracies to choose a layer from")
    return max(range(len(accuracy)), key=lambda i: (accuracy[i], -i))


def best_layer(accuracy: Sequence[float], layers: Sequence[int] | None = None) -> int:
    """The layer of the top accuracy, the first one on ties; ``accuracy[i]`` is that of ``layers[i]``
    (default: layer ``i``)."""
    index = best_index(accuracy)
    return index if layers is None else int(layers[index])
