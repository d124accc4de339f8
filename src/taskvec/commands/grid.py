"""``taskvec grid``: models x tasks x seeds x shots, as submitit jobs (local processes or a SLURM job array)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from taskvec.errors import TaskvecError

NAME = "grid"
HELP = "run models x tasks x seeds x shots from a YAML file through submitit (local workers or SLURM)"
ORDER = 3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="grid YAML: models, tasks, seeds, shots, sizes, slurm")
    parser.add_argument(
        "--executor", default="local", choices=["local", "slurm"],
        help="local: worker processes on this machine (default); slurm: one SLURM job array",
    )  # fmt: skip
    parser.add_argument("--workers", type=int, default=1, help="local jobs running at once (default 1)")
    parser.add_argument("--out", default="taskvec-grid", help="grid directory: runs/<model>/seed<s>-shots<k>/")
    parser.add_argument("--no-wait", action="store_true", help="slurm: submit the job array and return")


def run(args: argparse.Namespace) -> None:
    from tqdm import tqdm

    from taskvec.grid import load_grid, run_grid, write_summary

    spec = load_grid(args.config)
    if args.workers < 1:
        raise TaskvecError(f"--workers must be at least 1, got {args.workers}")
    total = len(spec.models) * len(spec.seeds) * len(spec.shots)
    bar = tqdm(total=total, unit="job", desc="grid", file=sys.stderr)

    def on_event(job, what: str, detail: str) -> None:
        if what in ("done", "failed"):
            bar.update(1)
            bar.write(f"{job.name}: {what} {detail}", file=sys.stderr)

    try:
        outcome = run_grid(spec, args.out, args.executor, args.workers, on_event, wait=not args.no_wait)
    finally:
        bar.close()
    print(f"grid {args.out}: {len(outcome.done)} job(s) finished now, {len(outcome.skipped)} already finished, "
          f"{len(outcome.failed)} failed")  # fmt: skip
    if outcome.submitted and args.no_wait:
        print(f"submitted SLURM job array {outcome.submitted[0].split('_')[0]}; run `taskvec grid-summary {args.out}`"
              " when it has finished")  # fmt: skip
        return
    if outcome.done or outcome.skipped:
        paths = write_summary(Path(args.out))
        print(f"summary -> {paths['md']}, {paths['html']}, {paths['csv']}")
    if outcome.failed:
        for name, reason in outcome.failed.items():
            print(f"  failed {name}: {reason}", file=sys.stderr)
        raise TaskvecError(f"{len(outcome.failed)} job(s) failed; rerun the same command to resume them "
                           "(finished jobs and tasks are kept)")  # fmt: skip
