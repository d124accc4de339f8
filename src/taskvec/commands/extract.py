"""``taskvec extract``: demonstrations of a task -> a task vector file (safetensors + JSON metadata)."""

from __future__ import annotations

import argparse
import sys

from taskvec.commands._common import (
    add_attribution_argument,
    add_dtype_argument,
    add_model_argument,
    add_prompt_arguments,
    add_threads_argument,
    prompt_protocol,
    require_positive,
)
from taskvec.errors import TaskvecError

NAME = "extract"
HELP = "extract a task vector (or --method fv: a function vector) from a task's demonstrations and save it"
ORDER = 3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_argument(parser)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--task", help="built-in task (see `taskvec tasks`)")
    source.add_argument("--demos", help="JSON/JSONL/CSV file of input/output pairs (as for `taskvec run --task-file`)")
    parser.add_argument("--layer", default="auto", help="layer to patch at: auto (dev sweep, default) or 0..L-1")
    parser.add_argument("--n-sets", type=int, default=1, help="demonstration sets theta is averaged over")
    parser.add_argument("--shots", type=int, default=5, help="demonstrations per set")
    parser.add_argument("--n-dummy", type=int, default=2, help="dummy queries per set")
    parser.add_argument("--n-dev", type=int, default=20, help="held-out pairs scored to choose the layer (at most)")
    parser.add_argument("--seed", type=int, default=0, help="which demonstrations and dummy queries are drawn")
    parser.add_argument("--method", default="tv",
                        help="tv: the task vector (replaces block L's output); fv: a function vector (head "
                             "attribution, then the top heads' outputs summed and added at block L); icv (In-Context "
                             "Vector), meandiff (mean difference), shift (mean ICL shift): at every position of "
                             "every layer or of one layer, strength chosen on dev")  # fmt: skip
    parser.add_argument("--fv-prompts", type=int, default=25,
                        help="with fv: clean and shuffled-label prompts for the head attribution")  # fmt: skip
    add_dtype_argument(parser)
    add_threads_argument(parser)
    add_attribution_argument(parser)
    add_prompt_arguments(parser)
    parser.add_argument("-o", "--output", required=True, help="output .safetensors file")


def parse_layer(value: str) -> int | None:
    if value == "auto":
        return None
    try:
        return int(value)
    except ValueError:
        raise TaskvecError(f"--layer must be 'auto' or a layer number, got {value!r}") from None


def run(args: argparse.Namespace) -> None:
    from pathlib import Path

    from tqdm import tqdm

    from taskvec.core.methods import method_name
    from taskvec.experiments.extract import ExtractConfig, extract_for_task
    from taskvec.models.loading import check_model_spec, load_model
    from taskvec.tasks.registry import builtin_task, load_task_file

    require_positive(args, "n_sets", "shots", "n_dummy", "n_dev", "fv_prompts")
    method = method_name(args.method)
    config = ExtractConfig(shots=args.shots, n_sets=args.n_sets, n_dummy=args.n_dummy, n_dev=args.n_dev,
                           layer=parse_layer(args.layer), seed=args.seed, method=method,
                           fv_prompts=args.fv_prompts, attribution=args.attribution,
                           prompt=prompt_protocol(args))  # fmt: skip
    out = Path(args.output)
    if not out.parent.is_dir():
        raise TaskvecError(f"output directory {str(out.parent)!r} of -o {args.output!r} does not exist")
    task = builtin_task(args.task) if args.task else load_task_file(args.demos)
    check_model_spec(args.model)
    print(f"loading {args.model} ...", file=sys.stderr)
    lm = config.prompt.applied(load_model(args.model, dtype=args.dtype))
    with tqdm(total=config.n_sets, unit="set", desc="extracting", file=sys.stderr) as bar:
        tv = extract_for_task(lm, task, config, progress=lambda done: bar.update(done - bar.n))
    tv.save(out)
    meta = tv.metadata
    made = (f"function vector of {meta['k']} heads, scale {meta['scale']:g}, added" if "k" in meta else
            f"{method} from {config.n_sets} set(s) of {config.shots} demonstrations")  # fmt: skip
    where = f"layer {tv.layer}" if tv.layer is not None else f"layers {tv.settings.get('layers') or 'all'}"
    print(f"task {task.name} on {args.model}: {where} of {lm.num_layers} ({meta['layer_selection']}), "
          f"dev accuracy {meta['dev_accuracy']:.2f} on {len(meta['dev_inputs'])} held-out pairs, "
          f"{made} -> {out}")  # fmt: skip
