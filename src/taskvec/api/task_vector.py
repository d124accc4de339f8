"""The TaskVector object and its safetensors file format (tensors + JSON metadata).

Format version 4 (written now) records how the vector is applied: ``method`` (a name of
:data:`taskvec.core.methods.METHOD_CLASSES`: ``task_vector``, ``function_vector``, ``in_context_vector``,
``mean_difference``, ``icl_shift``), its ``operation`` (``replace``, ``add`` or ``steer``), ``acts`` (``last``:
one layer, the last prompt token; ``every``: each layer of a range, at every position), ``position`` (the
sites' position: -1 or ``prompt``/``generated``/``all``) and ``settings`` (what the method needs to apply the
vector again: a mean difference's scale, an ICV's strength, the layers it acts at). The registry rebuilds the
method from them (:func:`taskvec.core.methods.method_for`): nothing outside ``core/methods`` branches on a
method's name.

Version 3 is version 2 plus ``method`` (``task_vector`` or ``function_vector``) and ``operation``
(``replace`` or ``add``); a function vector's file stores the applied vector (scale included) at every
layer. Version 1 and 2 files load as task vectors (``replace``). Every older file loads as what it was.

Format version 2: one float32 tensor ``vectors`` (num_layers, hidden) and, under the
safetensors metadata key ``taskvec``, a JSON object with the descriptive metadata (model id, weights
sha256 or revision, architecture, template, prompt prefix ids, demonstrations, dummy queries, dev
accuracy, taskvec version...) plus what :meth:`TaskVector.load` verifies: ``format_version``, ``layer``,
``num_layers``, ``hidden_size``, ``dtype`` and ``vectors_sha256`` (sha256 of the tensor's bytes), so a
truncated or tampered file is refused. Version-1 files (no checksum) still load.
"""

from __future__ import annotations

import hashlib
import json
import numbers
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from taskvec.api.compat import check_compatible
from taskvec.api.patching import apply_generate, vector_edits, vector_method
from taskvec.core.interfaces import Method
from taskvec.core.methods import METHOD_CLASSES, TaskVectorMethod
from taskvec.engine.steering import steering
from taskvec.errors import TaskvecError, TaskVectorFileError
from taskvec.io.vector_files import read_tensors, tensor_names, write_tensors

_KEY = "taskvec"
FORMAT_VERSION = 4
READABLE_VERSIONS = (1, 2, 3, 4)
#: Keys written by ``save`` and checked (then dropped) by ``load``: not part of ``metadata``.
_FILE_KEYS = ("format_version", "layer", "num_layers", "hidden_size", "dtype", "vectors_sha256", "acts", "position")
#: The methods and operations of format-3 files (before the registry recorded more).
_FORMAT3_OPERATIONS = {"task_vector": "replace", "function_vector": "add"}
#: Metadata keys that say which model a vector belongs to; vectors mixed by ``mean`` must agree on them.
MODEL_KEYS = ("model_id", "model_source", "architecture", "template", "prefix_ids")
_KEPT_BY_MEAN = ("model_class", "model_dtype", "taskvec_version", "method", "operation", "settings")


def vectors_sha256(vectors: torch.Tensor) -> str:
    """sha256 of the float32 little-endian bytes of ``vectors`` (what the file stores)."""
    data = vectors.detach().contiguous().float().cpu().numpy()
    return hashlib.sha256(data.astype("<f4", copy=False).tobytes()).hexdigest()


def sha256_of_json(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()


@dataclass
class TaskVector:
    """theta(S) at every layer: ``vectors[l]`` is block ``l``'s output at the last prompt token.

    ``layer`` is the layer to patch at when none is given (chosen by a dev sweep, or set by the user).
    ``alpha * tv`` scales theta; :meth:`mean` averages vectors of one model and layer.
    """

    vectors: torch.Tensor  # (num_layers, hidden), float32
    layer: int | None = None
    metadata: dict = field(default_factory=dict)

    @property
    def method(self) -> str:
        """The method's name (:data:`taskvec.core.methods.METHOD_CLASSES`); ``task_vector`` for every file
        before format 3."""
        return str(self.metadata.get("method", TaskVectorMethod.name))

    @property
    def operation(self) -> str:
        """How the vector changes a value: ``replace`` (task vectors), ``add`` or ``steer``."""
        return self.method_object().operation

    @property
    def settings(self) -> dict:
        """What the method needs to apply the vector again (e.g. a scale), as recorded."""
        return dict(self.metadata.get("settings") or {})

    def method_object(self) -> Method:
        """The method that applies this vector, rebuilt by the registry from the recorded name and settings."""
        return vector_method(self)

    def edits(self, layer: int | None = None) -> list:
        """The edits this vector makes (at ``layer``, default: the stored layer, or for an every-position
        method the layers it acts at)."""
        return vector_edits(self, layer)

    @contextmanager
    def applied(self, lm, layer: int | None = None) -> Iterator[TaskVector]:
        """``with vector.applied(lm):`` any forward or ``generate`` of ``lm.model`` inside the block sees this
        vector's edits (at ``layer``; default as :meth:`edits`), on every row; they are removed on exit, also
        after an exception. A forward with an empty key/value cache is a prompt (edits at the last prompt
        token or at prompt positions), one with a filled cache runs generated tokens."""
        check_compatible(lm, self)
        with steering(lm, self.edits(layer)):
            yield self

    @property
    def num_layers(self) -> int:
        return self.vectors.shape[0]

    @property
    def hidden_size(self) -> int:
        return self.vectors.shape[1]

    def at(self, layer: int | None = None) -> torch.Tensor:
        chosen = self.layer if layer is None else layer
        if chosen is None:
            raise TaskvecError("no layer given and this task vector has no chosen layer; pass layer=...")
        if not 0 <= chosen < self.num_layers:
            raise TaskvecError(
                f"layer {chosen!r} is out of range: this task vector has layers 0..{self.num_layers - 1}"
            )
        return self.vectors[chosen]

    # --- arithmetic ---------------------------------------------------------------------------------

    def __mul__(self, alpha: float) -> TaskVector:
        if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real):
            return NotImplemented
        alpha = float(alpha)
        if not torch.isfinite(torch.tensor(alpha)):
            raise TaskvecError(f"scale factor {alpha!r} is not a finite number")
        meta = dict(self.metadata, alpha=float(self.metadata.get("alpha", 1.0)) * alpha)
        method = self.method_object()
        if hasattr(method, "scaled_settings"):  # a method that uses the vector's direction only (ICV)
            meta["settings"] = method.scaled_settings(alpha)
            return TaskVector(vectors=self.vectors.clone(), layer=self.layer, metadata=meta)
        return TaskVector(vectors=self.vectors * alpha, layer=self.layer, metadata=meta)

    __rmul__ = __mul__

    @classmethod
    def mean(cls, vectors: Sequence[TaskVector]) -> TaskVector:
        """The average of task vectors of the same model (same id, weights, shape, template) and layer."""
        vectors = list(vectors)
        if not vectors or not all(isinstance(v, TaskVector) for v in vectors):
            raise TaskvecError(f"TaskVector.mean needs a non-empty list of TaskVector objects, got {vectors!r:.80}")
        first = vectors[0]
        for i, other in enumerate(vectors[1:], start=1):
            if other.vectors.shape != first.vectors.shape:
                raise TaskvecError(
                    f"cannot average task vectors of shapes {tuple(first.vectors.shape)} and "
                    f"{tuple(other.vectors.shape)} (vector {i}): (layers, hidden size) differ, so do the models"
                )
            if other.method != first.method:
                raise TaskvecError(f"cannot average a {first.method} and a {other.method} (vector {i})")
            if other.layer != first.layer:
                raise TaskvecError(
                    f"cannot average task vectors of layers {first.layer} and {other.layer} (vector {i})"
                )
            for key in MODEL_KEYS:
                a, b = first.metadata.get(key), other.metadata.get(key)
                if a is not None and b is not None and a != b:
                    raise TaskvecError(
                        f"cannot average task vectors with different {key}: {a!r} and {b!r} (vector {i})"
                    )
        meta = {k: first.metadata[k] for k in first.metadata if k in MODEL_KEYS or k in _KEPT_BY_MEAN}
        meta["mean_of"] = len(vectors)
        meta["demonstration_sets"] = [s for v in vectors for s in _demonstration_sets(v.metadata)]
        meta["dummy_queries"] = [q for v in vectors for q in v.metadata.get("dummy_queries", [])]
        stacked = torch.stack([v.vectors.float() for v in vectors])
        return cls(vectors=stacked.mean(dim=0), layer=first.layer, metadata=meta)

    # --- applying -----------------------------------------------------------------------------------

    def apply(self, lm, queries: Sequence[str], max_new_tokens: int = 1, *, layer: int | None = None, **kwargs):
        """Answers to ``queries`` with theta patched at ``layer`` (default: the stored one), decoding up to
        ``max_new_tokens`` greedily. Keyword arguments go to :func:`taskvec.api.patching.apply_generate`."""
        return apply_generate(lm, self, queries, max_new_tokens=max_new_tokens, layer=layer, **kwargs)

    # --- files --------------------------------------------------------------------------------------

    def save(self, path: str | Path) -> None:
        """Write a .safetensors file (atomically: a temporary name, then rename)."""
        path = Path(path)
        vectors = self.vectors.detach().contiguous().float().cpu()
        method = self.method_object()
        position = next((e.site.position for e in method.edits(0, vectors[0])), -1)
        meta = {
            **{k: v for k, v in self.metadata.items() if k not in _FILE_KEYS},
            "method": self.method,
            "operation": method.operation,
            "acts": method.acts,
            "position": position,
            "settings": method.settings(),
            "format_version": FORMAT_VERSION,
            "layer": self.layer,
            "num_layers": vectors.shape[0],
            "hidden_size": vectors.shape[1],
            "dtype": "float32",
            "vectors_sha256": vectors_sha256(vectors),
        }
        write_tensors(path, {"vectors": vectors}, {_KEY: json.dumps(meta, ensure_ascii=False)})

    @classmethod
    def load(cls, path: str | Path) -> TaskVector:
        """Read a file written by :meth:`save` (format 1 or 2); a damaged or foreign file raises TaskvecError."""
        path = Path(path)
        if not path.is_file():
            raise TaskVectorFileError(f"task vector file {str(path)!r} does not exist")
        name = repr(str(path))
        try:
            tensors, header = read_tensors(path, ["vectors"])
            raw, vectors = header.get(_KEY), tensors.get("vectors")
            keys = ["vectors"] if vectors is not None else tensor_names(path)
        except Exception as exc:  # safetensors raises its own error types for bad files
            raise TaskVectorFileError(
                f"{name} is not a taskvec safetensors file (or it is truncated): {_first_line(exc)}"
            ) from exc
        if raw is None or vectors is None:
            raise TaskVectorFileError(
                f"{name} is not a taskvec safetensors file: it has no 'taskvec' metadata or no 'vectors' "
                f"tensor (tensors: {keys[:5]})"
            )
        try:
            meta = json.loads(raw)
        except (ValueError, RecursionError) as exc:
            raise TaskVectorFileError(f"{name}: its taskvec metadata is not valid JSON ({_first_line(exc)})") from None
        if not isinstance(meta, dict):
            raise TaskVectorFileError(f"{name}: its taskvec metadata is {type(meta).__name__}, expected a JSON object")
        version = meta.get("format_version", 1)
        if version not in READABLE_VERSIONS:
            raise TaskVectorFileError(
                f"{name} has task vector format version {version!r}; this taskvec reads versions "
                f"{', '.join(map(str, READABLE_VERSIONS))} (a newer taskvec wrote it?)"
            )
        _check_method(name, meta, version)
        if vectors.ndim != 2 or 0 in vectors.shape or not vectors.is_floating_point():
            raise TaskVectorFileError(f"{name}: 'vectors' has shape {tuple(vectors.shape)} {vectors.dtype}, "
                                      "expected a 2-D float tensor (layers, hidden)")  # fmt: skip
        if version >= 2:
            _verify(name, meta, vectors)
        if not bool(torch.isfinite(vectors).all()):
            raise TaskVectorFileError(f"{name}: 'vectors' holds NaN or infinite values; extract the task vector again")
        layer = meta.get("layer")
        if layer is not None and (type(layer) is not int or not 0 <= layer < vectors.shape[0]):
            raise TaskVectorFileError(
                f"{name}: stored layer {layer!r} is not a layer index 0..{vectors.shape[0] - 1} or null"
            )
        for key in _FILE_KEYS:
            meta.pop(key, None)
        if meta.get("method", "task_vector") == "task_vector":  # the default: implied, as before format 3
            for key in ("method", "operation", "settings"):
                meta.pop(key, None)
        return cls(vectors=vectors.float(), layer=layer, metadata=meta)


def _check_method(name: str, meta: dict, version: int) -> None:
    """The recorded method must be one the registry knows, with its own operation and valid settings."""
    method, operation = meta.get("method", "task_vector"), meta.get("operation", "replace")
    if version <= 3:
        if _FORMAT3_OPERATIONS.get(method) != operation:
            raise TaskVectorFileError(
                f"{name}: method {method!r} with operation {operation!r}; expected one of "
                + ", ".join(f"{m} ({o})" for m, o in _FORMAT3_OPERATIONS.items())
            )
        return
    cls = METHOD_CLASSES.get(method)
    if cls is None or cls.operation != operation:
        raise TaskVectorFileError(
            f"{name}: method {method!r} with operation {operation!r}; expected one of "
            + ", ".join(f"{m} ({c.operation})" for m, c in METHOD_CLASSES.items())
        )
    settings = meta.get("settings", {})
    if not isinstance(settings, dict):
        raise TaskVectorFileError(f"{name}: settings {settings!r} is not a JSON object")
    try:
        cls.from_settings(settings)
    except (TaskvecError, ValueError, TypeError) as exc:
        raise TaskVectorFileError(f"{name}: settings {settings!r} are not valid for {method}: {exc}") from None
    layers = settings.get("layers")
    if layers is not None and (not isinstance(layers, list) or not all(type(x) is int and 0 <= x < meta.get(
            "num_layers", 0) for x in layers)):  # fmt: skip
        raise TaskVectorFileError(f"{name}: settings layers {layers!r} are not layer indices 0..num_layers-1")


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _verify(name: str, meta: dict, vectors: torch.Tensor) -> None:
    expected = (meta.get("num_layers"), meta.get("hidden_size"))
    if tuple(vectors.shape) != expected:
        raise TaskVectorFileError(
            f"{name}: 'vectors' has shape {tuple(vectors.shape)} but its metadata says {expected}: the file was altered"
        )
    digest = vectors_sha256(vectors)
    if digest != meta.get("vectors_sha256"):
        raise TaskVectorFileError(
            f"{name}: the vectors' sha256 {digest[:16]}... does not match the recorded "
            f"{str(meta.get('vectors_sha256'))[:16]}...: the file is damaged or was tampered with"
        )


def _demonstration_sets(meta: dict) -> list:
    if "demonstration_sets" in meta:
        return list(meta["demonstration_sets"])
    return [meta["demonstrations"]] if "demonstrations" in meta else []
