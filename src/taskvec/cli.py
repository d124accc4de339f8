"""The ``taskvec`` command line: demo, run, compare, tasks."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from taskvec.errors import TaskvecError
from taskvec.models.registry import BUNDLED_MODELS, DEFAULT_MODEL


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="taskvec", description="In-context-learning task vectors (Hendel et al. 2023)"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log details")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser(
        "demo", help="5 demonstrations of a task; ICL, task-vector and zero-shot answers side by side"
    )
    demo.add_argument(
        "--model", default=DEFAULT_MODEL, help=f"bundled name ({', '.join(BUNDLED_MODELS)}), folder, .gguf or hub id"
    )
    demo.add_argument("--task", default="to_upper", help="built-in task (see `taskvec tasks`)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])

    run = sub.add_parser("run", help="the paper's main experiment: Regular / Task vector / Baseline per task")
    run.add_argument("--model", default=DEFAULT_MODEL, help="model spec, or several separated by commas")
    run.add_argument(
        "--tasks", nargs="*", default=None,
        help="task names or groups: paper, extras, all (default: paper, or none when --task-file is given)",
    )  # fmt: skip
    run.add_argument("--task-file", action="append", default=[], help="extra task from a JSON/JSONL/CSV of pairs")
    run.add_argument("--shots", type=int, default=5)
    run.add_argument("--n-dev", type=int, default=50)
    run.add_argument("--n-test", type=int, default=50)
    run.add_argument("--n-baseline", type=int, default=100)
    run.add_argument("--n-dummy", type=int, default=2, help="dummy queries averaged per task vector")
    run.add_argument("--seed", type=int, default=41)
    run.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    run.add_argument("--batch-size", type=int, default=32)
    run.add_argument("--out", default=None, help="output directory (default: taskvec-runs/<model>)")

    compare = sub.add_parser("compare", help="model x (BL, TV, ICL) table and layer-curve overlay of several runs")
    compare.add_argument("runs", nargs="+", help="run directories (each holds a results.json)")
    compare.add_argument("--out", default="taskvec-comparison")

    sub.add_parser("tasks", help="list the built-in tasks")
    return parser


def _positive(args: argparse.Namespace, *names: str) -> None:
    for name in names:
        value = getattr(args, name)
        if value < 1:
            raise TaskvecError(f"--{name.replace('_', '-')} must be at least 1, got {value}")


def _cmd_demo(args: argparse.Namespace) -> None:
    from taskvec.demo import run_demo
    from taskvec.models.loading import load_model

    print(f"loading {args.model} ...", file=sys.stderr)
    lm = load_model(args.model, dtype=args.dtype)
    result = run_demo(lm, args.task, seed=args.seed)
    print(f"task {result.task} on {args.model}: {len(result.demonstrations)} demonstrations")
    for x, y in result.demonstrations:
        print(f"  {x} -> {y}")
    print(f"task vector patched at layer {result.layer} of {lm.num_layers} "
          f"(chosen on held-out queries: {result.layer_accuracy:.2f})\n")  # fmt: skip
    header = f"{'query':<14}{'gold':<10}{'regular ICL':<14}{'task vector':<14}{'zero-shot':<12}"
    print(header + "\n" + "-" * len(header))
    for row in result.rows:
        cells = [f"{row[k]}{'' if row['correct'][k] else ' x'}" for k in ("regular", "task_vector", "zero_shot")]
        print(f"{row['query']:<14}{row['gold']:<10}{cells[0]:<14}{cells[1]:<14}{cells[2]:<12}")
    totals = {k: sum(r["correct"][k] for r in result.rows) for k in ("regular", "task_vector", "zero_shot")}
    n = len(result.rows)
    print(f"\ncorrect: regular ICL {totals['regular']}/{n}, task vector {totals['task_vector']}/{n}, "
          f"zero-shot {totals['zero_shot']}/{n}   (x = wrong)")  # fmt: skip


def _cmd_run(args: argparse.Namespace) -> None:
    from tqdm import tqdm

    from taskvec.experiments.main_experiment import MainConfig
    from taskvec.experiments.runner import run_main
    from taskvec.report import write_comparison
    from taskvec.tasks.registry import resolve_task_names

    _positive(args, "shots", "n_dev", "n_test", "n_baseline", "n_dummy", "batch_size")
    models = [m.strip() for m in args.model.split(",") if m.strip()]
    names = args.tasks if args.tasks is not None else ([] if args.task_file else ["paper"])
    tasks = tuple(resolve_task_names(names))
    if not tasks and not args.task_file:
        raise TaskvecError("no tasks to run: name built-in tasks with --tasks or give --task-file")
    base = Path(args.out) if args.out else Path("taskvec-runs")
    run_dirs = []
    for model in models:
        out = base / Path(model).name if (len(models) > 1 or not args.out) else base
        config = MainConfig(model=model, tasks=tasks, task_files=tuple(args.task_file), shots=args.shots,
                            n_dev=args.n_dev, n_test=args.n_test, n_baseline=args.n_baseline, n_dummy=args.n_dummy,
                            seed=args.seed, dtype=args.dtype, batch_size=args.batch_size)  # fmt: skip
        bar = tqdm(total=None, unit="task", desc=model, file=sys.stderr)

        def progress(task: str, done: int, total: int, bar=bar) -> None:
            bar.total = total
            bar.n = done
            bar.set_postfix_str(task)
            bar.refresh()

        try:
            results = run_main(config, out, progress=progress)
        finally:
            bar.close()
        mean = results["summary"]["mean"]
        print(f"{model}: {mean['n_tasks']} tasks  baseline {mean['baseline']:.2f}  task vector {mean['hypothesis']:.2f}"
              f"  regular ICL {mean['regular']:.2f}  TV/ICL {mean['tv_over_icl'] or 0:.2f}  "
              f"({results['timing']['seconds']:.0f} s)  -> {out}/report.html")  # fmt: skip
        run_dirs.append(out)
    if len(run_dirs) > 1:
        paths = write_comparison(base, run_dirs)
        print(f"comparison -> {paths['html']}")


def _cmd_compare(args: argparse.Namespace) -> None:
    from taskvec.report import write_comparison

    paths = write_comparison(Path(args.out), [Path(r) for r in args.runs])
    print(f"comparison -> {paths['md']} and {paths['html']}")


def _cmd_tasks(args: argparse.Namespace) -> None:
    from taskvec.tasks.registry import ALL_TASKS, PAPER_TASKS, builtin_task

    for name in ALL_TASKS:
        task = builtin_task(name)
        group = "paper" if name in PAPER_TASKS else "extra"
        print(f"{name:<22}{task.category:<13}{group:<7}{len(task.pairs):>5} pairs  {task.description}")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    if not args.verbose:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    handlers = {"demo": _cmd_demo, "run": _cmd_run, "compare": _cmd_compare, "tasks": _cmd_tasks}
    try:
        handlers[args.command](args)
    except TaskvecError as exc:
        print(f"taskvec: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("taskvec: interrupted; `taskvec run` resumes from its finished tasks", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
