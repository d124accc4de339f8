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


def read_tensors(path: str | os.PathLike, keys: list[str] | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """The tensors (all, or ``keys`` that exist) and the header metadata of a safetensors file; raises whatever
    safetensors raises for a file that is not one (callers turn it into their own error naming the file)."""
    with safe_open(str(path), framework="pt") as fh:
        names = list(fh.keys())
        wanted = names if keys is None else [k for k in keys if k in names]
        return {k: fh.get_tensor(k) for k in wanted}, dict(fh.metadata() or {})


def tensor_names(path: str | os.PathLike) -> list[str]:
    """The names of the tensors of a safetensors file (nothing is read but its header)."""
    with safe_open(str(path), framework="pt") as fh:
        return list(fh.keys())


def save_vectors(path: str | Path, vectors: torch.Tensor, metadata: dict) -> None:
    """All vectors (N, H) of a robustness analysis in one file, ``metadata`` (task per row, layers, model)
    in its header."""
    write_tensors(path, {"vectors": vectors.contiguous().float()}, {ROBUSTNESS_KEY: json.dumps(metadata)})


def load_vectors(path: str | Path) -> tuple[torch.Tensor, dict]:
    """The vectors and metadata written by :func:`save_vectors`."""
    try:
        tensors, metadata = read_tensors(path, ["vectors"])
        return tensors["vectors"], json.loads(metadata[ROBUSTNESS_KEY])
    except Exception as exc:  # safetensors raises its own error types for bad files
        raise TaskvecError(f"{str(path)!r} is not a taskvec robustness vectors file: {exc}") from exc
