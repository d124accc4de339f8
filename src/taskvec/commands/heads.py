"""``taskvec heads``: head attribution (average indirect effect of every attention head) per task."""

from __future__ import annotations

import argparse
from pathlib import Path

from taskvec.commands._common import (
    add_attribution_argument,
    add_dtype_argument,
    add_model_argument,
    add_prompt_arguments,
    add_threads_argument,
    prompt_protocol,
    require_positive,
    task_progress,
)
from taskvec.errors import TaskvecError

NAME = "heads"
HELP = "head attribution: which attention heads carry each task (AIE table, heatmaps, top heads)"
ORDER = 5


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_argument(parser)
    parser.add_argument(
        "--tasks", nargs="*", default=None,
        help="task names or groups: paper, extras, all (default: paper, or none with --task-file)",
    )  # fmt: skip
    parser.add_argument("--task-file", action="append", default=[], help="extra task from a JSON/JSONL/CSV of pairs")
    parser.add_argument("--shots", type=int, default=5, help="demonstrations per prompt")
    parser.add_argument("--n-prompts", type=int, default=25,
                        help="clean prompts (and as many shuffled-label prompts) per task")  # fmt: skip
    parser.add_argument("--seed", type=int, default=41, help="sampling seed")
    add_attribution_argument(parser)
    add_prompt_arguments(parser)
    add_dtype_argument(parser)
    add_threads_argument(parser)
    parser.add_argument("--out", default=None, help="output directory (default: taskvec-runs/heads-<model>)")


def run(args: argparse.Namespace) -> None:
    from taskvec.experiments.heads_run import HeadsConfig, run_heads
    from taskvec.experiments.outdir import check_run_config
    from taskvec.models.loading import check_model_spec
    from taskvec.tasks.registry import load_tasks, resolve_task_names

    require_positive(args, "n_prompts")
    if args.shots < 2:
        raise TaskvecError(f"--shots must be at least 2 (shuffled labels need two demonstrations), got {args.shots}")
    names = args.tasks if args.tasks is not None else ([] if args.task_file else ["paper"])
    tasks = tuple(resolve_task_names(names))
    if not tasks and not args.task_file:
        raise TaskvecError("no tasks: name built-in tasks with --tasks or give --task-file")
    loaded = load_tasks(tasks, args.task_file)
    too_small = [t.name for t in loaded if len(t.pairs) < 3]
    if too_small:
        raise TaskvecError(f"task(s) {', '.join(too_small)} have fewer than 3 pairs; expected at least 3")
    check_model_spec(args.model)
    out = Path(args.out) if args.out else Path("taskvec-runs") / f"heads-{Path(args.model).name}"
    config = HeadsConfig(model=args.model, tasks=tasks, task_files=tuple(args.task_file), shots=args.shots,
                         n_prompts=args.n_prompts, seed=args.seed, dtype=args.dtype,
                         attribution=args.attribution, prompt=prompt_protocol(args))  # fmt: skip
    if out.is_dir():
        check_run_config(out, config.to_dict())
    with task_progress(f"heads {args.model}") as progress:
        results = run_heads(config, out, progress=progress)
    top = ", ".join(f"L{h['layer']}H{h['head']}" for h in results["top_heads"][:5])
    print(f"{args.model}: {len(results['tasks'])} tasks, top heads {top} ({results['timing']['seconds']:.0f} s) "
          f"-> {out}/report.html")  # fmt: skip
