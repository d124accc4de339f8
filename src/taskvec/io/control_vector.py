"""llama.cpp control vector files (GGUF): write one atomically, read one back and check it.

A control vector file holds one F32 1-D tensor ``direction.N`` (length n_embd) per steered block; llama.cpp
adds it to the output of decoder block N at every position (prompt and generated tokens), scaled by the
strength it is loaded with (``--control-vector-scaled FILE S``; files are summed). llama.cpp has no
``direction.0``: it keeps no tensor for block 0, and refuses a file that names one. It reads no metadata;
repeng writes ``general.architecture = "controlvector"``, ``controlvector.model_hint`` (the model's
architecture) and ``controlvector.layer_count`` (the number of direction tensors), and so does taskvec, plus
``taskvec.*`` keys that say where the vector came from.

**The index convention lives here, once.** taskvec's layer L is the output of decoder block L (0-based; the
residual stream after it, ``hidden_states[L + 1]`` in transformers). llama.cpp's graphs call
``build_cvec(cur, il)`` at the end of block ``il`` (0-based) with ``direction.il`` (read in its source:
``llama_adapter_cvec::apply_to``, ``tensors[il]``, ``src/models/*.cpp``), so taskvec layer L is
``direction.L`` (:data:`DIRECTION_OFFSET` = 0). If running llama.cpp shows an off-by-one, change
:data:`DIRECTION_OFFSET` and nothing else (export, import and their tests go through
:func:`direction_index` / :func:`taskvec_layer`).

No pickle, no torch.load: the file is parsed by ``gguf.GGUFReader`` (the llama.cpp project's own package).
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from taskvec.errors import TaskvecError, TaskVectorFileError
from taskvec.io.atomic import write_text_atomic

ARCHITECTURE = "controlvector"
MODEL_HINT_KEY = f"{ARCHITECTURE}.model_hint"
LAYER_COUNT_KEY = f"{ARCHITECTURE}.layer_count"
#: Metadata keys written by taskvec (llama.cpp ignores them).
TASKVEC_PREFIX = "taskvec."

#: taskvec's layer L (the output of block L, 0-based) is ``direction.(L + DIRECTION_OFFSET)``. 0: llama.cpp adds
#: direction.N to the output of block N (0-based). The one place to flip if llama.cpp shows an off-by-one.
DIRECTION_OFFSET = 0
#: llama.cpp keeps no tensor for block 0: the smallest usable direction index.
FIRST_DIRECTION = 1
_NAME = re.compile(r"direction\.(0|[1-9][0-9]*)")


def direction_index(layer: int) -> int:
    """The N of the ``direction.N`` tensor that llama.cpp adds where taskvec's layer ``layer`` acts."""
    return int(layer) + DIRECTION_OFFSET


def taskvec_layer(index: int) -> int:
    """taskvec's layer (block output, 0-based) that llama.cpp's ``direction.<index>`` is added to."""
    return int(index) - DIRECTION_OFFSET


def steerable(layer: int, num_layers: int) -> bool:
    """Whether llama.cpp can add a vector where taskvec's ``layer`` acts in a model of ``num_layers`` blocks
    (it has tensors for direction.1 .. direction.(num_layers - 1))."""
    return FIRST_DIRECTION <= direction_index(layer) <= num_layers - 1


def tensor_name(index: int) -> str:
    return f"direction.{int(index)}"


class ControlVectorFileError(TaskVectorFileError):
    """A llama.cpp control vector file is missing, not a GGUF, or holds something llama.cpp would refuse."""


@dataclass
class ControlVector:
    """The directions of a control vector file (``direction.N`` -> float32 (n_embd,)) and its metadata."""

    directions: dict[int, np.ndarray]
    metadata: dict[str, object] = field(default_factory=dict)

    @property
    def n_embd(self) -> int:
        return int(next(iter(self.directions.values())).shape[0])

    @property
    def model_hint(self) -> str | None:
        hint = self.metadata.get(MODEL_HINT_KEY)
        return hint if isinstance(hint, str) and hint else None

    def taskvec_metadata(self) -> dict[str, object]:
        """The ``taskvec.*`` keys, without the prefix."""
        return {k[len(TASKVEC_PREFIX) :]: v for k, v in self.metadata.items() if k.startswith(TASKVEC_PREFIX)}


def _checked_directions(directions: Mapping[int, object]) -> dict[int, np.ndarray]:
    if not directions:
        raise TaskvecError("a control vector needs at least one direction tensor; none was given")
    checked: dict[int, np.ndarray] = {}
    width = None
    for index, values in sorted(directions.items()):
        if isinstance(index, bool) or not isinstance(index, int) or index < FIRST_DIRECTION:
            raise TaskvecError(f"control vector direction index {index!r} is not an integer >= {FIRST_DIRECTION} "
                               "(llama.cpp has no direction.0: block 0 cannot be steered)")  # fmt: skip
        array = np.asarray(values, dtype=np.float32)
        if array.ndim != 1 or array.shape[0] == 0:
            raise TaskvecError(f"{tensor_name(index)} has shape {array.shape}; expected one non-empty row (n_embd,)")
        if width is not None and array.shape[0] != width:
            raise TaskvecError(f"{tensor_name(index)} has length {array.shape[0]}, the others {width}: one n_embd")
        if not np.isfinite(array).all():
            raise TaskvecError(f"{tensor_name(index)} holds NaN or infinite values")
        width = array.shape[0]
        checked[index] = np.ascontiguousarray(array)
    return checked


def write_control_vector(
    path: str | os.PathLike,
    directions: Mapping[int, object],
    *,
    model_hint: str | None = None,
    metadata: Mapping[str, str | bool | int | float] | None = None,
) -> None:
    """Write ``directions`` (index N >= 1 -> (n_embd,) values) as llama.cpp's ``direction.N`` F32 tensors,
    with repeng's ``controlvector.*`` keys and ``metadata`` (keys as given, e.g. ``taskvec.method``), written
    atomically (:func:`taskvec.io.atomic.write_text_atomic`): a reader never sees a half-written file."""
    import gguf

    checked = _checked_directions(directions)
    with tempfile.TemporaryDirectory() as scratch:  # GGUFWriter writes to a path; the file is kilobytes
        built = Path(scratch) / "control_vector.gguf"
        writer = gguf.GGUFWriter(built, ARCHITECTURE)
        if model_hint:
            writer.add_string(MODEL_HINT_KEY, str(model_hint))
        writer.add_uint32(LAYER_COUNT_KEY, len(checked))
        for key, value in (metadata or {}).items():
            if isinstance(value, bool):
                writer.add_bool(key, value)
            elif isinstance(value, int):
                writer.add_int64(key, value)
            elif isinstance(value, float):
                writer.add_float64(key, value)
            else:
                writer.add_string(key, str(value))
        for index, values in checked.items():
            writer.add_tensor(tensor_name(index), values)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        write_text_atomic(path, built.read_bytes())


def _field_value(item) -> object:
    """A scalar or string metadata value of a ``GGUFReader`` field (None for arrays)."""
    import gguf

    if not item.types or item.types[0] == gguf.GGUFValueType.ARRAY:
        return None
    if item.types[0] == gguf.GGUFValueType.STRING:
        return bytes(item.parts[-1]).decode("utf-8", errors="replace")
    value = item.parts[-1].tolist()[0]
    return bool(value) if item.types[0] == gguf.GGUFValueType.BOOL else value


def read_control_vector(path: str | os.PathLike) -> ControlVector:
    """Read and check a control vector file: every tensor must be ``direction.N`` (N an integer >= 1), F32,
    one-dimensional, all of one length, with finite values; raises :class:`ControlVectorFileError` naming
    what is wrong."""
    import gguf

    path = Path(path)
    name = repr(str(path))
    if not path.is_file():
        raise ControlVectorFileError(f"control vector file {name} does not exist")
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as exc:  # gguf raises ValueError, struct errors, ... for files that are not GGUF
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ControlVectorFileError(f"{name} is not a GGUF file (or it is truncated): {first}") from None
    metadata = {key: value for key, item in reader.fields.items()
                if not key.startswith("GGUF.") and (value := _field_value(item)) is not None}  # fmt: skip
    if not reader.tensors:
        raise ControlVectorFileError(f"{name} holds no tensors; a control vector has direction.N tensors")
    directions: dict[int, np.ndarray] = {}
    width = None
    for tensor in reader.tensors:
        match = _NAME.fullmatch(tensor.name)
        if match is None:
            raise ControlVectorFileError(f"{name}: tensor {tensor.name!r} is not named direction.N (N a block "
                                         "number >= 1): not a control vector")  # fmt: skip
        index = int(match.group(1))
        if index < FIRST_DIRECTION:
            raise ControlVectorFileError(f"{name}: tensor {tensor.name!r}: llama.cpp has no direction.0 (block 0 "
                                         "cannot be steered) and refuses the file")  # fmt: skip
        if tensor.tensor_type != gguf.GGMLQuantizationType.F32:
            raise ControlVectorFileError(f"{name}: tensor {tensor.name!r} is {tensor.tensor_type.name}; llama.cpp "
                                         "reads F32 direction tensors only")  # fmt: skip
        shape = [int(d) for d in tensor.shape]
        if len(shape) != 1 or shape[0] == 0:
            raise ControlVectorFileError(f"{name}: tensor {tensor.name!r} has shape {shape}; expected 1-D (n_embd)")
        if width is not None and shape[0] != width:
            raise ControlVectorFileError(f"{name}: tensor {tensor.name!r} has length {shape[0]}, the ones before "
                                         f"{width}: all directions must have the model's n_embd")  # fmt: skip
        values = np.array(tensor.data, dtype=np.float32).reshape(-1)
        if not np.isfinite(values).all():
            bad = int(np.flatnonzero(~np.isfinite(values))[0])
            raise ControlVectorFileError(f"{name}: tensor {tensor.name!r} holds {values[bad]} at element {bad}: "
                                         "NaN or infinite values")  # fmt: skip
        width = shape[0]
        directions[index] = values
    return ControlVector(directions=dict(sorted(directions.items())), metadata=metadata)
