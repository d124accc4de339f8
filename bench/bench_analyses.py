"""Wall time of the three analyses on gemma-3-270m at the paper's sizes for a few tasks, with layers fixed.

    python bench/bench_analyses.py [--model gemma-3-270m] [--layer 9]

Prints one row per analysis: what ran, seconds, and the process's peak RSS so far (MB).
"""

from __future__ import annotations

import argparse
import time

import taskvec
from taskvec.experiments.analysis_setup import LayerOptions
from taskvec.experiments.conflict import ConflictConfig, run_conflict
from taskvec.experiments.harness import peak_rss_mb
from taskvec.experiments.interpret import InterpretConfig, run_interpret
from taskvec.experiments.robustness import RobustnessConfig, run_robustness

TASKS = ("next_letter", "to_upper", "en_fr", "country_capital")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--layer", type=int, default=9)
    args = parser.parse_args()
    started = time.perf_counter()
    lm = taskvec.load_model(args.model)
    rows = [("load model", time.perf_counter() - started, peak_rss_mb())]
    layers = LayerOptions(layer=args.layer)
    jobs = [
        (f"robustness: {len(TASKS)} tasks x 50 vectors + t-SNE/PCA",
         lambda: run_robustness(RobustnessConfig(tasks=TASKS, layers=layers), lm=lm)),
        ("conflict: 1 pair (next_letter <- to_upper) x 50 prompts",
         lambda: run_conflict(ConflictConfig(pairs=(("next_letter", "to_upper"),), layers=layers), lm=lm)),
        (f"interpret: {len(TASKS)} tasks, mean of 50 thetas, top 10 words",
         lambda: run_interpret(InterpretConfig(tasks=TASKS, words_only=True, layers=layers), lm=lm)),
        ("quick layer sweep (20 dev sets) for 1 task, inside interpret",
         lambda: run_interpret(InterpretConfig(tasks=TASKS[:1], n_sets=1), lm=lm)),
    ]  # fmt: skip
    for name, job in jobs:
        t = time.perf_counter()
        job()
        rows.append((name, time.perf_counter() - t, peak_rss_mb()))
    width = max(len(r[0]) for r in rows)
    print(f"{'step':<{width}}  {'seconds':>8}  {'peak RSS MB':>11}")
    for name, seconds, rss in rows:
        print(f"{name:<{width}}  {seconds:8.1f}  {rss:11.0f}")


if __name__ == "__main__":
    main()
