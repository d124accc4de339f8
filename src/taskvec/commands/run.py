"""``taskvec run``: the paper's main experiment (Regular / Task vector / Baseline per task)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from taskvec.commands._common import (
    add_attribution_argument,
    add_batch_size_argument,
    add_device_argument,
    add_dtype_argument,
    add_model_argument,
    add_prompt_arguments,
    add_threads_argument,
    prompt_protocol,
    require_positive,
    task_progress,
)
from taskvec.engine.close_calls import DEFAULT_RECHECK_MARGIN, check_recheck_margin
from taskvec.errors import TaskvecError

NAME = "run"
HELP = "the paper's main experiment: Regular / Task vector / Baseline per task"
ORDER = 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_argument(parser, "; several separated by commas")
    parser.add_argument(
        "--tasks", nargs="*", default=None,
        help="task names or groups: paper, extras, all (default: paper, or none when --task-file is given)",
    )  # fmt: skip
    parser.add_argument("--task-file", action="append", default=[], help="extra task from a JSON/JSONL/CSV of pairs")
    parser.add_argument("--shots", type=int, default=5, help="demonstrations per prompt")
    parser.add_argument("--n-dev", type=int, default=50, help="dev sets per task (choose the layer)")
    parser.add_argument("--n-test", type=int, default=50, help="test sets per task (the reported accuracies)")
    parser.add_argument("--n-baseline", type=int, default=100, help="bare queries per task for the zero-shot baseline")
    parser.add_argument("--n-dummy", type=int, default=2, help="dummy queries averaged per task vector")
    parser.add_argument("--seed", type=int, default=41, help="sampling seed (41: the published results)")
    parser.add_argument(
        "--methods", default="tv",
        help="methods compared: tv (the task vector: the paper), fv (function vectors, with head attribution), "
             "icv (In-Context Vectors), meandiff (mean difference h(answer) - h(input)), shift (mean ICL shift); "
             "more than tv adds the controls (random vector of the same norm, task-agnostic mean, shuffled-label "
             "ICL with and without each vector). Example: --methods tv,fv,icv,meandiff",
    )  # fmt: skip
    parser.add_argument(
        "--every-layers", default="both", choices=("both", "all"),
        help="with icv/meandiff/shift: the configurations tried on dev: every layer at each strength and single "
             "layers (both), or every layer only (all: the methods' definition)",
    )  # fmt: skip
    parser.add_argument("--fv-k", default="1,2,5,10", help="with fv: numbers of heads tried on dev")
    parser.add_argument("--fv-scales", default="0.5,1,2,4", help="with fv: scales of the vector tried on dev")
    parser.add_argument("--fv-search", default="refine", choices=("refine", "full"),
                        help="with fv: refine (every layer with every k at the middle scale, then the 3 best "
                             "layers with every k and scale) or full (the whole layer x k x scale grid)")  # fmt: skip
    parser.add_argument("--fv-corrupted", type=int, default=25,
                        help="with fv: shuffled-label prompts per task for the head attribution")  # fmt: skip
    add_attribution_argument(parser)
    add_prompt_arguments(parser)
    add_dtype_argument(parser)
    add_threads_argument(parser)
    parser.add_argument(
        "--recheck-margin", type=float, default=DEFAULT_RECHECK_MARGIN,
        help="with --dtype mixed: predictions whose two best logits are closer than this are recomputed in float32 "
             f"(default {DEFAULT_RECHECK_MARGIN}; 0 turns rechecking off)",
    )  # fmt: skip
    add_device_argument(parser)
    add_batch_size_argument(parser)
    parser.add_argument("--out", default=None, help="output directory (default: taskvec-runs/<model>)")
    parser.add_argument(
        "--wait", action="store_true",
        help="when another run is writing to the output directory, wait for it instead of refusing",
    )  # fmt: skip


def run(args: argparse.Namespace) -> None:
    from taskvec.core.methods import parse_methods
    from taskvec.experiments.backoff import parse_batch_size
    from taskvec.experiments.main_experiment import MainConfig
    from taskvec.experiments.outdir import check_run_config, finished_task_names
    from taskvec.experiments.runner import run_main
    from taskvec.models.devices import check_device
    from taskvec.models.loading import check_model_spec
    from taskvec.report import write_comparison
    from taskvec.tasks.protocol import protocol_record
    from taskvec.tasks.registry import load_tasks, resolve_task_names
    from taskvec.tasks.validation import PoolSizes, check_pools, task_pools

    # Everything that can be checked without a model is checked here, for every model of the run,
    # so that a bad value stops the run before hours of work rather than after the first model.
    require_positive(args, "shots", "n_dev", "n_test", "n_baseline", "n_dummy")
    recheck_margin = check_recheck_margin(args.recheck_margin)
    methods = parse_methods(args.methods)
    fv = fv_settings(args) if "function_vector" in methods else {}
    every = {} if args.every_layers == "both" else {"single_layers": False}
    batch_size, device = parse_batch_size(args.batch_size), check_device(args.device)
    models = [m.strip() for m in args.model.split(",") if m.strip()]
    if not models:
        raise TaskvecError(f"--model {args.model!r} names no model")
    names = args.tasks if args.tasks is not None else ([] if args.task_file else ["paper"])
    tasks = tuple(resolve_task_names(names))
    if not tasks and not args.task_file:
        raise TaskvecError("no tasks to run: name built-in tasks with --tasks or give --task-file")
    loaded = load_tasks(tasks, args.task_file)  # task files: readable, well-formed
    check_pools(task_pools(loaded), PoolSizes(args.shots, args.n_dev, args.n_test, args.n_dummy))
    task_names = [t.name for t in loaded]
    base = Path(args.out) if args.out else Path("taskvec-runs")
    plans = []
    for model in models:
        check_model_spec(model)
        out = base / Path(model).name if (len(models) > 1 or not args.out) else base
        config = MainConfig(model=model, tasks=tasks, task_files=tuple(args.task_file), shots=args.shots,
                            n_dev=args.n_dev, n_test=args.n_test, n_baseline=args.n_baseline, n_dummy=args.n_dummy,
                            seed=args.seed, dtype=args.dtype, batch_size=batch_size,
                            recheck_margin=recheck_margin, methods=methods, fv=fv, every=every,
                            protocol=protocol_record(prompt_protocol(args)))  # fmt: skip
        resuming = out.is_dir() and check_run_config(out, config.to_dict())  # refuses another configuration
        plans.append((model, out, config, finished_task_names(out, task_names) if resuming else []))
    run_dirs = []
    for model, out, config, finished in plans:
        if finished:
            print(f"resuming the run in {out}: {len(finished)} of {len(task_names)} tasks already done, skipped "
                  f"({', '.join(finished)})", file=sys.stderr)  # fmt: skip
        with task_progress(model) as progress:
            results = run_main(config, out, progress=progress, device=device, wait=args.wait)
        mean = results["summary"]["mean"]
        for name, entry in (results["summary"].get("methods") or {}).items():
            print(f"  {name:32s} {entry['accuracy']:.2f} (ICL-correct items {entry['icl_correct'] or 0:.2f})",
                  file=sys.stderr)  # fmt: skip
        print(f"{model}: {mean['n_tasks']} tasks  baseline {mean['baseline']:.2f}  task vector {mean['hypothesis']:.2f}"
              f"  regular ICL {mean['regular']:.2f}  TV/ICL {mean['tv_over_icl'] or 0:.2f}  "
              f"({results['timing']['seconds']:.0f} s)  -> {out}/report.html")  # fmt: skip
        run_dirs.append(out)
    if len(run_dirs) > 1:
        paths = write_comparison(base, run_dirs)
        print(f"comparison -> {paths['html']}")


def _numbers(text: str, option: str, kind: type) -> list:
    try:
        values = [kind(x) for x in text.split(",") if x.strip()]
    except ValueError:
        values = []
    if not values or any(v <= 0 for v in values):
        raise TaskvecError(f"{option} {text!r}: expected positive numbers separated by commas")
    return values


def fv_settings(args: argparse.Namespace) -> dict:
    """The function vector's settings from the command line (positive numbers, checked)."""
    if args.fv_corrupted < 1:
        raise TaskvecError(f"--fv-corrupted {args.fv_corrupted}: expected a positive number of prompts")
    return {"n_corrupted": args.fv_corrupted, "ks": _numbers(args.fv_k, "--fv-k", int),
            "scales": _numbers(args.fv_scales, "--fv-scales", float),
            "refine_layers": 3 if args.fv_search == "refine" else None,
            **({"attribution": args.attribution} if args.attribution != "exact" else {})}  # fmt: skip
