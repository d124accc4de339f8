"""Throughput of `taskvec grid`'s local executor (submitit worker processes): 1 worker vs 2.

    python bench/bench_grid.py [--jobs 6] [--workers 1,2] [--tasks to_upper,next_letter,list_last]

A tiny random llama (3 layers, width 32; from tests/tiny_models.py, saved to a temporary folder) is run
as a grid of ``--jobs`` jobs (one model x ``--jobs`` seeds x 1 shot count), each a full `taskvec run` of
the given tasks in its own submitit process, into a fresh directory per worker count. Prints wall time,
jobs per minute and the speedup over the first row, plus the CPU that other processes used meanwhile, in
cores (whole-machine busy time from /proc/stat minus this benchmark's and its job processes' CPU time): the
machine may be shared, and timings are only meaningful when that is near 0. Tiny-model jobs are dominated
by process start-up (importing torch and transformers) and report writing, not by the model.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))


def busy_seconds() -> float:
    """CPU seconds the whole machine has been busy, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def own_seconds() -> float:
    """CPU seconds of this process and its finished descendants (the job processes)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=6)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--tasks", default="to_upper,next_letter,list_last")
    args = parser.parse_args()

    from tiny_models import make_tiny_model

    from taskvec.grid import parse_grid, run_grid

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "tiny-llama"
        lm = make_tiny_model("llama")
        lm.model.save_pretrained(model_dir)
        lm.tokenizer.save_pretrained(model_dir)
        spec = parse_grid({"models": [str(model_dir)], "tasks": args.tasks.split(","),
                           "seeds": list(range(1, args.jobs + 1)), "shots": [4], "n_dev": 20, "n_test": 20,
                           "n_baseline": 20})  # fmt: skip
        rows = []
        for workers in (int(w) for w in args.workers.split(",")):
            busy0, own0 = busy_seconds(), own_seconds()
            started = time.perf_counter()
            outcome = run_grid(spec, Path(tmp) / f"grid-{workers}", workers=workers)
            seconds = time.perf_counter() - started
            others = (busy_seconds() - busy0 - (own_seconds() - own0)) / seconds
            if outcome.failed or len(outcome.done) != args.jobs:
                raise SystemExit(f"grid with {workers} worker(s) failed: {outcome.failed}")
            rows.append((workers, seconds, others))
    cores = os.cpu_count()
    print(f"\n{args.jobs} tiny-model jobs ({args.tasks}), {cores} CPU cores")
    print(f"{'workers':>7} {'wall s':>8} {'jobs/min':>9} {'speedup':>8} {'other processes (cores)':>24}")
    for workers, seconds, busy in rows:
        print(f"{workers:>7} {seconds:>8.1f} {60 * args.jobs / seconds:>9.2f} {rows[0][1] / seconds:>8.2f}x "
              f"{busy:>24.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
