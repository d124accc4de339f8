"""The TaskVector object and its safetensors file format (tensors + JSON metadata)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from taskvec.errors import TaskvecError

_KEY = "taskvec"
FORMAT_VERSION = 1


@dataclass
class TaskVector:
    """theta(S) at every layer: ``vectors[l]`` is block ``l``'s output at the last prompt token.

    ``layer`` is the layer to patch at when none is given (chosen by a dev sweep, or set by the user).
    """

    vectors: torch.Tensor  # (num_layers, hidden), float32
    layer: int | None = None
    metadata: dict = field(default_factory=dict)

    @property
    def num_layers(self) -> int:
        return self.vectors.shape[0]

    def at(self, layer: int | None = None) -> torch.Tensor:
        chosen = self.layer if layer is None else layer
        if chosen is None:
            raise TaskvecError("no layer given and this task vector has no chosen layer; pass layer=...")
        if not 0 <= chosen < self.num_layers:
            raise TaskvecError(
                f"layer {chosen!r} is out of range: this task vector has layers 0..{self.num_layers - 1}"
            )
        return self.vectors[chosen]

    def save(self, path: str | Path) -> None:
        """Write a .safetensors file atomically (a unique temporary name in the same folder, then rename)."""
        from safetensors.torch import save

        from taskvec.report.results_io import write_text_atomic

        meta = {**self.metadata, "format_version": FORMAT_VERSION, "layer": self.layer}
        blob = save({"vectors": self.vectors.contiguous().float()}, metadata={_KEY: json.dumps(meta)})
        write_text_atomic(path, blob)

    @classmethod
    def load(cls, path: str | Path) -> TaskVector:
        """Read a file written by :meth:`save`; anything else gives a TaskvecError saying what is wrong."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise TaskvecError(f"task vector file {str(path)!r} does not exist")
        try:
            with safe_open(str(path), framework="pt") as fh:
                raw_meta = (fh.metadata() or {}).get(_KEY, "{}")
                vectors = fh.get_tensor("vectors")
        except Exception as exc:  # safetensors raises its own error types for bad files
            raise TaskvecError(f"{str(path)!r} is not a taskvec safetensors file: {_first_line(exc)}") from exc
        try:
            meta = json.loads(raw_meta)
        except (ValueError, RecursionError) as exc:
            raise TaskvecError(f"{str(path)!r} has unreadable taskvec metadata (not JSON: {exc})") from None
        if not isinstance(meta, dict):
            raise TaskvecError(f"{str(path)!r}: taskvec metadata must be a JSON object, got {type(meta).__name__}")
        _check_vectors(vectors, path)
        layer = meta.pop("layer", None)
        if layer is not None and (type(layer) is not int or not 0 <= layer < vectors.shape[0]):
            raise TaskvecError(
                f"{str(path)!r}: stored layer {layer!r} is not a layer index 0..{vectors.shape[0] - 1} or null"
            )
        meta.pop("format_version", None)
        return cls(vectors=vectors.float(), layer=layer, metadata=meta)


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _check_vectors(vectors: torch.Tensor, path: Path) -> None:
    if vectors.dim() != 2 or 0 in vectors.shape:
        raise TaskvecError(
            f"{str(path)!r}: 'vectors' has shape {tuple(vectors.shape)}; expected (num_layers, hidden_size)"
        )
    if not vectors.is_floating_point():
        raise TaskvecError(f"{str(path)!r}: 'vectors' has dtype {vectors.dtype}; expected a floating-point tensor")
    if not torch.isfinite(vectors).all():
        raise TaskvecError(f"{str(path)!r}: 'vectors' holds NaN or infinite values; extract the task vector again")
