"""A model split by an accelerate device map vs the same model on one device: same numbers, time overhead.

    python bench/bench_device_map.py [--model gemma-3-270m] [--offload disk] [--tasks to_upper,country_capital]
                                     [--n 20]

The model is loaded twice; the second copy is split with ``taskvec.models.devices.interleaved_map``:
every other decoder block, the embeddings and the unembedding are offloaded (``disk``: weights saved to a
temporary folder and read in for each forward pass; ``cpu``: only accelerate's hooks, which is what a
multi-GPU map costs minus the transfers) and the rest stays on the CPU. Both run the main experiment
(`run_main`, seed 41) on the same tasks with ``--n`` dev/test/baseline items, into separate folders. The
script checks that every task's results (dev accuracy by layer, best layer, BL/TV/ICL) and every
prediction are identical (exit 1 if not) and prints the wall time of each and the ratio. The machine may
be shared: the CPU other processes used meanwhile is shown (cores).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def busy_seconds() -> float:
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def own_seconds() -> float:
    me = resource.getrusage(resource.RUSAGE_SELF)
    return me.ru_utime + me.ru_stime


def timed_run(config, out: Path, lm) -> tuple[dict, float, float]:
    from taskvec.experiments import run_main

    busy0, own0, started = busy_seconds(), own_seconds(), time.perf_counter()
    results = run_main(config, out, lm=lm)
    seconds = time.perf_counter() - started
    others = (busy_seconds() - busy0 - (own_seconds() - own0)) / seconds
    return results, seconds, others


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--offload", default="disk", choices=["disk", "cpu"])
    parser.add_argument("--tasks", default="to_upper,country_capital")
    parser.add_argument("--n", type=int, default=20)
    args = parser.parse_args()

    import taskvec
    from taskvec.experiments import MainConfig
    from taskvec.models.dispatch import dispatch_split, interleaved_map

    config = MainConfig(model=args.model, tasks=tuple(args.tasks.split(",")), n_dev=args.n, n_test=args.n,
                        n_baseline=args.n)  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        single_lm = taskvec.load_model(args.model)
        split_lm = taskvec.load_model(args.model)
        device_map = interleaved_map(split_lm, args.offload)
        split_lm = dispatch_split(split_lm, device_map, offload_dir=Path(tmp) / "offload")
        offloaded = sum(1 for d in device_map.values() if d == args.offload)
        single, t_single, o_single = timed_run(config, Path(tmp) / "single", single_lm)
        split, t_split, o_split = timed_run(config, Path(tmp) / "split", split_lm)
        same_rows = (Path(tmp) / "single" / "predictions.jsonl").read_text() == (
            Path(tmp) / "split" / "predictions.jsonl"
        ).read_text()
    same_tasks = all(
        {**split["tasks"][t], "seconds": 0} == {**single["tasks"][t], "seconds": 0} for t in single["tasks"]
    )
    mean = single["summary"]["mean"]
    print(f"\n{args.model}: tasks {args.tasks}, n_dev = n_test = n_baseline = {args.n}; split: {offloaded} of "
          f"{len(device_map)} modules offloaded to {args.offload}")  # fmt: skip
    print(f"single-device BL {mean['baseline']:.2f} TV {mean['hypothesis']:.2f} ICL {mean['regular']:.2f}")
    print(f"identical per-task results: {same_tasks}; identical predictions.jsonl: {same_rows}")
    print(f"{'run':<14} {'wall s':>8} {'ratio':>6} {'other processes (cores)':>24}")
    print(f"{'single device':<14} {t_single:>8.1f} {1:>6.2f} {o_single:>24.2f}")
    print(f"{'split':<14} {t_split:>8.1f} {t_split / t_single:>6.2f} {o_split:>24.2f}")
    if not (same_tasks and same_rows):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
