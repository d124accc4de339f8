"""safetensors files of vectors with JSON metadata in their header, written atomically (no pickle)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save

from taskvec.errors import TaskvecError
from taskvec.io.atomic import write_text_atomic

ROBUSTNESS_KEY = "taskvec_robustness"


def write_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """A safetensors file of ``tensors`` with ``metadata`` in its header, written atomically."""
    write_text_atomic(Path(path), save(tensors, metadata=metadata))


def save_vectors(path: str | Path, vectors: torch.Tensor, metadata: dict) -> None:
    """All vectors (N, H) of a robustness analysis in one file, ``metadata`` (task per row, layers, model)
    in its header."""
    write_tensors(path, {"vectors": vectors.contiguous().float()}, {ROBUSTNESS_KEY: json.dumps(metadata)})


def load_vectors(path: str | Path) -> tuple[torch.Tensor, dict]:
    """The vectors and metadata written by :func:`save_vectors`."""
    try:
        with safe_open(str(path), framework="pt") as fh:
            return fh.get_tensor("vectors"), json.loads((fh.metadata() or {})[ROBUSTNESS_KEY])
    except Exception as exc:  # safetensors raises its own error types for bad files
        raise TaskvecError(f"{str(path)!r} is not a taskvec robustness vectors file: {exc}") from exc
