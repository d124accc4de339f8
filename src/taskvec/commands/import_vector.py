"""``taskvec import``: a llama.cpp control vector (GGUF) -> a taskvec vector file, to apply with ``taskvec apply``.

The vector is a mean difference (an add at every position of each layer it acts at) with scale ``--scale``:
its vectors are the file's directions at their layers (taskvec layer of ``direction.N``:
:func:`taskvec.io.control_vector.taskvec_layer`) and zeros elsewhere, and it acts at those layers only. The model
is loaded to check that the file fits it (n_embd = hidden size, every direction on one of its blocks) and to
record which model the vector is for; the file's sha256 is recorded too.
"""

from __future__ import annotations

import argparse
import math
import sys

from taskvec.commands._common import add_dtype_argument, add_threads_argument
from taskvec.errors import TaskvecError

NAME = "import"
HELP = ("read a llama.cpp control vector (GGUF) into a taskvec vector file: added at every position of its layers "
        "(a mean difference), for `taskvec apply`")  # fmt: skip
ORDER = 5


class ImportRefusedError(TaskvecError):
    """A control vector that does not fit the model it is imported for."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("control_vector", help="llama.cpp control vector .gguf (direction.N tensors)")
    parser.add_argument("-o", "--output", required=True, help="output .safetensors vector file")
    parser.add_argument("--model", default=None,
                        help="the model the vector is for (default: the model id recorded by `taskvec export`)")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="multiply the directions by this (as llama.cpp --control-vector-scaled FILE S)")
    add_dtype_argument(parser)
    add_threads_argument(parser)


def vector_from_control(cv, lm, *, scale: float = 1.0, source: dict | None = None, name: str = ""):
    """A :class:`taskvec.api.task_vector.TaskVector` (mean difference, scale ``scale``) that adds the control
    vector ``cv`` (:class:`taskvec.io.control_vector.ControlVector`) where llama.cpp adds it, for ``lm``;
    refuses one of another width or with directions past the model's blocks."""
    import json

    import torch

    from taskvec.api.compat import hidden_size, model_metadata
    from taskvec.api.task_vector import TaskVector
    from taskvec.core.methods import MeanDifferenceMethod
    from taskvec.io.control_vector import FIRST_DIRECTION, direction_index, steerable, taskvec_layer

    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ImportRefusedError(f"--scale must be a finite number, got {scale!r}")
    what = f"{name}: " if name else ""
    width, layers = hidden_size(lm), lm.num_layers
    if cv.n_embd != width:
        raise ImportRefusedError(f"{what}its directions have n_embd {cv.n_embd}, the hidden size of model "
                                 f"{lm.model_id!r} is {width}: it was made for another model")  # fmt: skip
    for index in cv.directions:
        layer = taskvec_layer(index)
        if not 0 <= layer < layers or not steerable(layer, layers):
            raise ImportRefusedError(
                f"{what}direction.{index} is past the last block of model {lm.model_id!r} ({layers} blocks: llama.cpp "
                f"steers direction.{FIRST_DIRECTION} .. direction.{direction_index(layers - 1)}): it was made for "
                "another model"
            )
    vectors = torch.zeros(layers, width, dtype=torch.float32)
    for index, values in cv.directions.items():
        vectors[taskvec_layer(index)] = torch.from_numpy(values.copy())
    method = MeanDifferenceMethod(float(scale), sorted(taskvec_layer(i) for i in cv.directions))
    recorded = cv.taskvec_metadata()
    metadata = {
        **model_metadata(lm),
        "method": MeanDifferenceMethod.name,
        "settings": method.settings(),
        "imported_from": {
            "format": "llama.cpp control vector (GGUF)",
            **(source or {}),
            "model_hint": cv.model_hint,
            "directions": sorted(cv.directions),
            "taskvec": {k: v for k, v in recorded.items() if k != "template"},
        },
    }
    template = _recorded_template(recorded.get("template"))
    if template is not None:
        metadata["template"] = template
    if isinstance(recorded.get("task"), str):
        metadata["task"] = recorded["task"]
    json.dumps(metadata)  # every value is JSON (the file's header)
    return TaskVector(vectors=vectors, layer=None, metadata=metadata)


def _recorded_template(raw) -> dict | None:
    """The prompt template ``taskvec export`` recorded (JSON), if it is one."""
    import json

    from taskvec.prompts import PromptTemplate

    if not isinstance(raw, str):
        return None
    try:
        value = json.loads(raw)
        PromptTemplate(**value)
    except (ValueError, TypeError):
        return None
    return value if isinstance(value, dict) else None


def run(args: argparse.Namespace) -> None:
    from pathlib import Path

    from taskvec.api.compat import architecture
    from taskvec.io.control_vector import read_control_vector
    from taskvec.models import dense_cache
    from taskvec.models.loading import check_model_spec, load_model

    out = Path(args.output)
    if not out.parent.is_dir():
        raise TaskvecError(f"output directory {str(out.parent)!r} of -o {args.output!r} does not exist")
    if not math.isfinite(args.scale):
        raise ImportRefusedError(f"--scale must be a finite number, got {args.scale}")
    source = Path(args.control_vector)
    cv = read_control_vector(source)
    model = args.model or cv.taskvec_metadata().get("model_id")
    if not isinstance(model, str) or not model:
        raise ImportRefusedError(f"{args.control_vector!r} records no model id (taskvec wrote no taskvec.model_id): "
                                 "pass --model")  # fmt: skip
    check_model_spec(model)
    print(f"loading {model} ...", file=sys.stderr)
    lm = load_model(model, dtype=args.dtype)
    info = {"file": source.name, "sha256": dense_cache.sha256_of_file(source)}
    tv = vector_from_control(cv, lm, scale=args.scale, source=info, name=repr(args.control_vector))
    if cv.model_hint and cv.model_hint != architecture(lm):
        print(f"taskvec: warning: {source.name} says it is for a {cv.model_hint!r} model, {model!r} is a "
              f"{architecture(lm)!r}; its width and layers fit, so it is imported", file=sys.stderr)  # fmt: skip
    tv.save(out)
    layers = tv.settings["layers"]
    print(f"{source.name} -> {out}: mean difference added at every position of layer(s) "
          f"{', '.join(map(str, layers))} of {lm.num_layers}, scale {args.scale:g}, on {model}")  # fmt: skip
