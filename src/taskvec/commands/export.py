"""``taskvec export``: a vector file -> a llama.cpp control vector (GGUF), where the method allows it.

A control vector adds one fixed vector to the output of decoder block N at every position (prompt and generated
tokens), for each ``direction.N`` it holds; llama.cpp cannot steer block 0. What each method's edits become
(:func:`control_directions`; the method is never named here: its edits decide):

- an ``Add`` at every position (mean difference, ICL shift): exact, ``direction.N`` = the added value (the
  method's scale included) at each layer the method acts at;
- an ``Add`` at some positions only (a function vector at the last prompt token, a mean difference restricted
  to prompt or generated tokens): refused; ``--approximate`` adds the same value at every position;
- a ``Steer`` (In-Context Vector: the state normalized, plus strength times the unit vector, brought back to its
  own norm): refused; ``--approximate --norm X`` writes ``strength * X_L * v_L / |v_L|``, the add that the steer
  is to first order for a token of norm ``X_L`` orthogonal to ``v_L`` (the file records no typical norm, so the
  user gives it);
- a ``Replace`` (task vector at the last prompt token): refused; ``--approximate`` loads the model and writes
  ``theta - mean(h)``, h being block L's last-token output on the task's bare query prompts
  (:mod:`taskvec.api.reference_states`): the add that makes the replace for a typical query, here added at
  every position;
- with ``--approximate`` and no ``--norm``, an In-Context Vector's norm per layer is the mean norm of those
  same states.

A vector acting at layer 0 is refused unless ``--skip-block-0`` (that layer is left out, and the output says so).
The index convention (taskvec layer L = block L's output = ``direction.L``) is
:data:`taskvec.io.control_vector.DIRECTION_OFFSET`.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass, field

from taskvec.commands._common import add_threads_argument
from taskvec.errors import TaskvecError

NAME = "export"
HELP = ("write a vector file as a llama.cpp control vector (GGUF; direction.N added to block N's output at every "
        "position): exact for mean differences and ICL shifts, others refused or --approximate")  # fmt: skip
ORDER = 5
FORMATS = ("llama-cpp",)


class ExportRefusedError(TaskvecError):
    """A vector whose edits a llama.cpp control vector cannot make (as asked)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("vector", help=".safetensors vector file written by `taskvec extract` or TaskVector.save")
    parser.add_argument("--format", default="llama-cpp", choices=FORMATS,
                        help="llama-cpp: a control vector GGUF (llama.cpp --control-vector FILE)")  # fmt: skip
    parser.add_argument("-o", "--output", required=True, help="output .gguf file")
    parser.add_argument(
        "--approximate", action="store_true",
        help="export a vector a control vector cannot reproduce exactly, added at every position: a function vector "
             "as it is; a task vector as theta - mean(h) (h: block L's last-token output on the task's bare "
             "queries; loads the model); an In-Context Vector as strength x norm x unit vector (the norm: --norm, "
             "else the mean norm of those states). The file and the output say what was approximated",
    )  # fmt: skip
    parser.add_argument(
        "--norm", default=None, metavar="X[,X...]",
        help="with --approximate, for an In-Context Vector: the typical norm of the residual stream where it acts, "
             "one number or one per layer of the file (comma-separated); default: measured on the model",
    )  # fmt: skip
    parser.add_argument("--model", default=None,
                        help="with --approximate, for a task vector or an In-Context Vector without --norm: the "
                             "model its reference states are measured on (default: the file's model id)")  # fmt: skip
    add_threads_argument(parser)
    parser.add_argument("--skip-block-0", action="store_true",
                        help="leave out layer 0 (block 0's output), which llama.cpp cannot steer, instead of "
                             "refusing the vector")  # fmt: skip


@dataclass
class Directions:
    """What a control vector file gets from a vector: ``direction.N`` values (N = direction index), whether
    they only approximate the vector's edits, and why."""

    directions: dict[int, object]
    approximate: bool
    notes: list[str] = field(default_factory=list)
    skipped_layers: list[int] = field(default_factory=list)

    @property
    def note(self) -> str:
        return " ".join(self.notes)


def parse_norms(spec: str | None, num_layers: int) -> list[float] | None:
    """``--norm``: one number for every layer, or one per layer."""
    if spec is None:
        return None
    try:
        values = [float(x) for x in spec.split(",")]
    except ValueError:
        raise ExportRefusedError(f"--norm {spec!r} is not a number or a comma-separated list of numbers") from None
    if len(values) not in (1, num_layers):
        raise ExportRefusedError(f"--norm {spec!r} gives {len(values)} norms; expected one, or one per layer "
                                 f"({num_layers})")  # fmt: skip
    bad = next((v for v in values if not math.isfinite(v) or v <= 0), None)
    if bad is not None:
        raise ExportRefusedError(f"--norm {spec!r}: {bad} is not a positive finite norm")
    return values * num_layers if len(values) == 1 else values


def control_directions(
    tv,
    *,
    approximate: bool = False,
    skip_block_0: bool = False,
    norms: list[float] | None = None,
    reference=None,
    name: str = "",
) -> Directions:
    """The ``direction.N`` values of a control vector that makes ``tv``'s edits (see the module's docstring);
    raises :class:`ExportRefusedError`, naming why, for what it cannot make (as asked). ``reference``: the
    :class:`taskvec.api.reference_states.ReferenceStates` of the file's queries, which ``--approximate`` needs for a
    replace (and for a steer without ``norms``)."""
    import torch

    from taskvec.core.sites import ALL, Add, Replace, Steer
    from taskvec.io.control_vector import direction_index, steerable

    what = f"{name}: " if name else ""
    method = tv.method
    at = 0 if tv.layer is None else tv.layer
    for edit in tv.method_object().edits(at, tv.vectors[at]):  # what kind of edits, before any layer is needed
        if isinstance(edit, Replace) and not approximate:
            block = f"block {tv.layer}'s" if tv.layer is not None else "a block's"
            raise ExportRefusedError(
                f"{what}a {method} replaces {block} output at {_where(edit.site.position)} by theta, and a control "
                "vector only adds one fixed vector at every position (the add equal to that replace, theta - h, is "
                "different for every prompt); pass --approximate to export theta - mean(h) over the task's bare "
                "queries (the model is loaded), or extract an additive vector (--method meandiff or shift)"
            )
    if tv.method_object().acts == "last" and tv.layer is None:
        raise ExportRefusedError(f"{what}the {method} records no layer to act at (a one-layer method's layer is "
                                 "chosen at extraction): extract it again with a layer")  # fmt: skip
    edits = tv.edits()
    num_layers = tv.num_layers
    notes: list[str] = []
    per_layer: dict[int, torch.Tensor] = {}
    inexact = False
    for edit in edits:
        layer = edit.site.layer
        if isinstance(edit, Replace):
            value = _replace_as_add(edit, approximate, reference, method, what)
            notes.append(f"APPROXIMATE: the {method} replaces block {layer}'s output at "
                         f"{_where(edit.site.position)} by theta in taskvec; this file adds theta - mean(h) at every "
                         f"position (prompt and generated tokens), h being that state on {reference.n_prompts} bare "
                         "query prompts of the task.")  # fmt: skip
            inexact = True
            per_layer[layer] = per_layer[layer] + value if layer in per_layer else value
            continue
        if edit.site.head is not None:
            raise ExportRefusedError(f"{what}a {method} edits attention head {edit.site.head} of block {layer}; a "
                                     "control vector can only add to a block's output")  # fmt: skip
        if isinstance(edit, Steer):
            if norms is None and reference is not None:
                norms = [float(x) for x in reference.norm]
            value = _steer_as_add(edit, approximate, norms, method, what)
            notes.append(_STEER_NOTE)
            inexact = True
        elif isinstance(edit, Add):
            value = edit.value.detach().float().cpu()
            if edit.site.position != ALL:
                where = _where(edit.site.position)
                if not approximate:
                    raise ExportRefusedError(
                        f"{what}a {method} is added at {where} only (layer {layer}), a control vector at every "
                        "position (prompt and generated tokens), so the answers would differ; pass --approximate to "
                        "export it added at every position anyway"
                    )
                notes.append(f"APPROXIMATE: the {method} is added at {where} in taskvec; this file adds the same "
                             "value at every position (prompt and generated tokens).")  # fmt: skip
                inexact = True
        else:  # an edit kind this exporter does not know
            raise ExportRefusedError(f"{what}a {method} makes {type(edit).__name__} edits; a control vector can "
                                     "only add a vector")  # fmt: skip
        per_layer[layer] = per_layer[layer] + value if layer in per_layer else value
    if norms is not None and _STEER_NOTE not in notes:
        raise ExportRefusedError(f"{what}--norm is for an In-Context Vector's steer; a {method} makes no steer edit")
    skipped = sorted(layer for layer in per_layer if not steerable(layer, num_layers))
    if skipped and not skip_block_0:
        raise ExportRefusedError(
            f"{what}the {method} acts at layer {skipped[0]} (the output of block {skipped[0]}), which llama.cpp cannot "
            f"steer (it has no direction.{direction_index(skipped[0])}); pass --skip-block-0 to leave it out (its "
            "effect is lost) or extract the vector at other layers"
        )
    if skipped:
        notes.append(f"APPROXIMATE: layer(s) {', '.join(map(str, skipped))} left out (llama.cpp cannot steer block "
                     "0: it has no direction.0); taskvec also adds there.")  # fmt: skip
        inexact = True
    directions = {direction_index(layer): value.numpy() for layer, value in sorted(per_layer.items())
                  if layer not in skipped}  # fmt: skip
    if not directions:
        raise ExportRefusedError(f"{what}nothing is left to export once layer(s) {skipped} are left out")
    if not inexact:
        notes.append("exact: direction.N is what taskvec adds to the output of block N (0-based) at every position.")
    return Directions(directions, inexact, list(dict.fromkeys(notes)), skipped)


def _where(position) -> str:
    if position == -1:
        return "the last prompt token"
    if isinstance(position, int):
        return f"prompt token {position} from the end"
    return f"{position} tokens"


_STEER_NOTE = ("APPROXIMATE: the In-Context Vector's steer (each state normalized, plus strength x unit vector, "
               "brought back to its own norm) is written as the add strength x norm x unit vector: the steer's "
               "first-order effect on a state of the given norm orthogonal to the vector. Not reproduced: states of "
               "other norms, the steer keeping every state's norm, and its push of up to twice as much where a state "
               "points against the vector.")  # fmt: skip


def _steer_as_add(edit, approximate: bool, norms: list[float] | None, method: str, what: str):
    layer = edit.site.layer
    if not approximate:
        raise ExportRefusedError(
            f"{what}an {method} steers each token's state and brings it back to the state's own norm (layer {layer}), "
            "which no fixed add reproduces; pass --approximate with --norm (the typical residual-stream norm where it "
            "acts) to export strength x norm x its unit vector"
        )
    if norms is None:
        raise ExportRefusedError(
            f"{what}--approximate needs --norm for an {method}: the add that approximates its steer is strength x "
            "(the token's norm) x unit vector, and the file records no typical norm; give one number, or one per layer"
        )
    value = edit.value.detach().float().cpu()
    length = float(value.norm())
    if length == 0.0:
        return value * 0.0
    return value * (float(edit.strength) * norms[layer] / length)


def _replace_as_add(edit, approximate: bool, reference, method: str, what: str):
    layer = edit.site.layer
    if not approximate:  # (refused earlier with the full reason)
        raise ExportRefusedError(f"{what}a {method} replaces block {layer}'s output; a control vector can only add")
    if reference is None:
        raise ExportRefusedError(f"{what}--approximate needs the model for a {method}: the add is theta - mean(h), "
                                 "h measured on the task's bare queries (pass --model, or keep the model id in the "
                                 "file)")  # fmt: skip
    return edit.value.detach().float().cpu() - reference.mean[layer].float().cpu()


def needs_reference(tv, approximate: bool, norms) -> bool:
    """Whether ``--approximate`` export of ``tv`` needs the model's reference states: a replace, or a steer
    without ``--norm``."""
    from taskvec.core.sites import Replace, Steer

    if not approximate:
        return False
    at = 0 if tv.layer is None else tv.layer
    kinds = {type(e) for e in tv.method_object().edits(at, tv.vectors[at])}
    return Replace in kinds or (Steer in kinds and norms is None)


def metadata_of(tv, made: Directions) -> dict:
    """The ``taskvec.*`` keys of the GGUF (llama.cpp ignores them): where the vector came from, whether the file
    only approximates it, and why."""
    import json

    from taskvec.api.task_vector import vectors_sha256
    from taskvec.version import __version__

    meta = tv.metadata
    out = {
        "taskvec.method": tv.method,
        "taskvec.approximate": made.approximate,
        "taskvec.note": made.note,
        "taskvec.num_layers": tv.num_layers,
        "taskvec.index_convention": "direction.N is added to the output of decoder block N (0-based)",
        "taskvec.vectors_sha256": vectors_sha256(tv.vectors),
        "taskvec.version": __version__,
    }
    if made.skipped_layers:
        out["taskvec.skipped_layers"] = ",".join(map(str, made.skipped_layers))
    for key in ("model_id", "task", "architecture"):
        if isinstance(meta.get(key), str):
            out[f"taskvec.{key}"] = meta[key]
    sha = (meta.get("model_source") or {}).get("sha256") if isinstance(meta.get("model_source"), dict) else None
    if isinstance(sha, str):
        out["taskvec.model_sha256"] = sha
    if isinstance(meta.get("template"), dict):
        out["taskvec.template"] = json.dumps(meta["template"], ensure_ascii=False)
    return out


def export_control_vector(
    tv, path, *, approximate=False, skip_block_0=False, norms=None, reference=None, name=""
) -> Directions:
    """Write ``tv`` as a llama.cpp control vector at ``path`` (atomically); what was written, and why."""
    from taskvec.io.control_vector import write_control_vector

    made = control_directions(tv, approximate=approximate, skip_block_0=skip_block_0, norms=norms,
                              reference=reference, name=name)  # fmt: skip
    write_control_vector(path, made.directions, model_hint=tv.metadata.get("architecture") or None,
                         metadata=metadata_of(tv, made))  # fmt: skip
    return made


def run(args: argparse.Namespace) -> None:
    from pathlib import Path

    from taskvec.api.task_vector import TaskVector

    out = Path(args.output)
    if not out.parent.is_dir():
        raise TaskvecError(f"output directory {str(out.parent)!r} of -o {args.output!r} does not exist")
    if args.norm is not None and not args.approximate:
        raise ExportRefusedError("--norm is used only with --approximate (for an In-Context Vector)")
    tv = TaskVector.load(args.vector)
    norms = parse_norms(args.norm, tv.num_layers)
    if args.model is not None and not args.approximate:
        raise ExportRefusedError("--model is used only with --approximate (to measure a task vector's or an "
                                 "In-Context Vector's reference states)")  # fmt: skip
    reference = None
    if needs_reference(tv, args.approximate, norms):
        control_directions(tv, approximate=True, skip_block_0=args.skip_block_0, norms=norms,
                           reference=_placeholder(tv), name=repr(args.vector))  # refuse what no model fixes, first
        reference = _reference(tv, args)
    made = export_control_vector(tv, out, approximate=args.approximate, skip_block_0=args.skip_block_0,
                                 norms=norms, reference=reference, name=repr(args.vector))  # fmt: skip
    indices = sorted(made.directions)
    listed = ", ".join(f"direction.{i}" for i in indices) if len(indices) <= 6 else \
        f"direction.{indices[0]} .. direction.{indices[-1]} ({len(indices)} tensors)"  # fmt: skip
    width = len(next(iter(made.directions.values())))
    print(f"{tv.method} -> {out}: {listed}, n_embd {width}; load it with llama.cpp --control-vector {out}")
    for note in made.notes:
        print(f"note: {note}")


def _reference(tv, args: argparse.Namespace):
    from taskvec.api.reference_states import query_inputs, reference_states
    from taskvec.models.loading import check_model_spec, load_model

    try:
        query_inputs(tv)
    except TaskvecError as exc:
        raise ExportRefusedError(f"{exc} (an In-Context Vector can take --norm instead)") from None
    model = args.model or tv.metadata.get("model_id")
    if not isinstance(model, str) or not model:
        raise ExportRefusedError(f"{args.vector!r} records no model id: pass --model (the model its reference "
                                 "states are measured on)")  # fmt: skip
    check_model_spec(model)
    print(f"loading {model} to measure the reference states ...", file=sys.stderr)
    ref = reference_states(load_model(model), tv)
    print(f"reference states: {ref.n_prompts} bare query prompts", file=sys.stderr)
    return ref


def _placeholder(tv):
    """Reference states of the right shape (zero means, unit norms) for checking a vector before loading a model."""
    import torch

    from taskvec.api.reference_states import ReferenceStates

    return ReferenceStates(torch.zeros_like(tv.vectors, dtype=torch.float32), torch.ones(tv.num_layers), 0)
