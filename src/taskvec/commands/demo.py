"""``taskvec demo``: a task's ICL, task-vector and zero-shot answers side by side."""

from __future__ import annotations

import argparse
import sys

from taskvec.commands._common import add_device_argument, add_dtype_argument, add_model_argument, add_threads_argument

NAME = "demo"
HELP = "5 demonstrations of a task; ICL, task-vector and zero-shot answers side by side"
ORDER = 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_argument(parser)
    parser.add_argument("--task", default="to_upper", help="built-in task (see `taskvec tasks`)")
    parser.add_argument("--seed", type=int, default=0, help="which demonstrations and queries are drawn")
    add_dtype_argument(parser)
    add_threads_argument(parser)
    add_device_argument(parser)


def run(args: argparse.Namespace) -> None:
    from taskvec.demo import run_demo
    from taskvec.models.loading import check_model_spec, load_model
    from taskvec.tasks.registry import builtin_task

    builtin_task(args.task)  # an unknown name is refused before the model loads
    check_model_spec(args.model)
    print(f"loading {args.model} ...", file=sys.stderr)
    lm = load_model(args.model, dtype=args.dtype, device=args.device)
    result = run_demo(lm, args.task, seed=args.seed)
    print(f"task {result.task} on {args.model}: {len(result.demonstrations)} demonstrations")
    for x, y in result.demonstrations:
        print(f"  {x} -> {y}")
    print(f"task vector patched at layer {result.layer} of {lm.num_layers} "
          f"(chosen on held-out queries: {result.layer_accuracy:.2f})\n")  # fmt: skip
    header = f"{'query':<14}{'gold':<10}{'regular ICL':<14}{'task vector':<14}{'zero-shot':<12}"
    print(header + "\n" + "-" * len(header))
    kinds = ("regular", "task_vector", "zero_shot")
    for row in result.rows:
        cells = [f"{row[k]}{'' if row['correct'][k] else ' x'}" for k in kinds]
        print(f"{row['query']:<14}{row['gold']:<10}{cells[0]:<14}{cells[1]:<14}{cells[2]:<12}")
    totals = {k: sum(r["correct"][k] for r in result.rows) for k in kinds}
    n = len(result.rows)
    print(f"\ncorrect: regular ICL {totals['regular']}/{n}, task vector {totals['task_vector']}/{n}, "
          f"zero-shot {totals['zero_shot']}/{n}   (x = wrong)")  # fmt: skip
