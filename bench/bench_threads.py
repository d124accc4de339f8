"""Threads x machine load x engine path: wall time of a small `taskvec run` (one task), to choose the default.

    python bench/bench_threads.py [--model gemma-3-270m] [--task to_upper] [--threads 1,2] [--repeats 1]

For each executor (``plain``: every prompt run whole; ``shared``: the fast executor, whose shared
demonstration prefixes suffered most from contention), each thread count and each machine state
(``quiet``: nothing added by this script; ``busy``: a competing process that keeps one core busy with
float32 matrix products, as another job on the machine would), one fresh subprocess loads the model and
runs the main experiment on one task with small splits (``--n-dev 20 --n-test 20 --n-baseline 20``). It
prints the wall time of the experiment (model load excluded) and the 1-minute load average before each
measurement: on a shared machine "quiet" is only as quiet as the other users let it be, so read the load
column.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import time

INNER = r"""
import json, sys, time, torch
from transformers.utils import logging as hf_logging
from taskvec.experiments.main_experiment import MainConfig
from taskvec.experiments.runner import run_main
from taskvec.models.loading import load_model
hf_logging.disable_progress_bar()
model, task, threads, shared, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "shared", sys.argv[5]
torch.set_num_threads(threads)
lm = load_model(model)
config = MainConfig(model=model, tasks=(task,), n_dev=20, n_test=20, n_baseline=20)
started = time.perf_counter()
results = run_main(config, out, lm=lm, executor="fast" if shared else "plain")
print(json.dumps({"seconds": time.perf_counter() - started, "summary": results["summary"]["mean"]}))
"""


def competitor(stop) -> None:
    """Keep one core busy with float32 matrix products until ``stop`` is set."""
    import torch

    torch.set_num_threads(1)
    a = torch.randn(512, 512)
    while not stop.is_set():
        a = torch.tanh(a @ a)


def measure(model: str, task: str, threads: int, path: str) -> float:
    with tempfile.TemporaryDirectory() as out:
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        done = subprocess.run([sys.executable, "-c", INNER, model, task, str(threads), path, out],
                              capture_output=True, text=True, env=env, check=True)  # fmt: skip
    return json.loads(done.stdout.strip().splitlines()[-1])["seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--task", default="to_upper")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--paths", default="plain,shared")
    parser.add_argument("--states", default="quiet,busy")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    print(f"{'state':<6} {'path':<7} {'threads':>7} {'load':>5} {'seconds':>8}")
    rows = []
    for state in args.states.split(","):
        stop = mp.Event()
        hog = mp.Process(target=competitor, args=(stop,), daemon=True) if state == "busy" else None
        if hog:
            hog.start()
            time.sleep(2)
        try:
            for _ in range(args.repeats):
                for path in args.paths.split(","):
                    for threads in (int(t) for t in args.threads.split(",")):
                        load = os.getloadavg()[0]
                        seconds = measure(args.model, args.task, threads, path)
                        rows.append({"state": state, "path": path, "threads": threads, "load": load,
                                     "seconds": seconds})  # fmt: skip
                        print(f"{state:<6} {path:<7} {threads:>7} {load:>5.1f} {seconds:>8.1f}", flush=True)
        finally:
            if hog:
                stop.set()
                hog.join()
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
