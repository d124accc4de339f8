"""Gradient attribution (attribution patching) against exact patching, beside exact patching's own seed-to-seed
agreement (the noise floor).

    python bench/bench_attribution.py [--model gemma-3-270m] [--tasks paper] [--seeds 41,42] [--n-prompts 25]
        [--threads N] [--json out.json] [--runs EXACT_RUN_DIR,GRADIENT_RUN_DIR]

Per task, the clean and shuffled-label prompts of ``taskvec heads`` (same seed, same prompts) give three AIE tables:
exact patching with the first seed, attribution patching with the first seed, and exact patching with the second
seed. Printed per task and on average: Spearman and Pearson correlation over all heads, the overlap of the top 10
heads, whether the top head is the same, and the seconds each attribution took. ``--runs``: two ``taskvec run
--methods tv,fv`` directories (``--attribution exact`` and ``gradient``, the same tasks and seed) are compared too:
the function vector's test accuracy each way, per task.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import pearsonr, spearmanr


def agreement(a: np.ndarray, b: np.ndarray) -> dict:
    from taskvec.heads.attribution import top_heads

    x, y = a.ravel(), b.ravel()
    ta, tb = top_heads(torch.from_numpy(a), 10), top_heads(torch.from_numpy(b), 10)
    return {"spearman": float(spearmanr(x, y).statistic), "pearson": float(pearsonr(x, y).statistic),
            "top10_overlap": len(set(ta) & set(tb)), "top1_same": ta[0] == tb[0]}


def attribution_tables(lm, executor, task, seeds, n_prompts) -> dict:
    from taskvec.experiments.heads_run import HeadsConfig, task_examples
    from taskvec.heads.attribution import head_attribution

    out = {}
    for name, seed, how in (("exact", seeds[0], "exact"), ("gradient", seeds[0], "gradient"),
                            ("exact_seed2", seeds[1], "exact")):  # fmt: skip
        config = HeadsConfig(model=lm.model_id, tasks=(task.name,), n_prompts=n_prompts, seed=seed)
        prepared, clean, corrupted = task_examples(lm, task, config)
        start = time.perf_counter()
        att = head_attribution(executor, clean, corrupted, prepared.template, attribution=how)
        out[name] = {"aie": att.aie.numpy(), "seconds": time.perf_counter() - start}
    return out


def fv_accuracy(run_dir: Path) -> dict:
    results = json.loads((run_dir / "results.json").read_text())
    return {name: t["methods"]["function_vector"]["accuracy"] for name, t in results["tasks"].items()
            if "function_vector" in t.get("methods", {})}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--tasks", default="paper", help="comma-separated task names, or paper (the 18)")
    parser.add_argument("--seeds", default="41,42")
    parser.add_argument("--n-prompts", type=int, default=25)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--runs", default=None, help="EXACT_RUN_DIR,GRADIENT_RUN_DIR of taskvec run --methods tv,fv")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import taskvec
    from taskvec.runtime import make_executor
    from taskvec.tasks.registry import builtin_task, resolve_task_names

    names = resolve_task_names(args.tasks.split(","))
    seeds = [int(s) for s in args.seeds.split(",")]
    lm = taskvec.load_model(args.model)
    executor = make_executor(lm, "fast")
    print(f"{args.model}: {len(names)} tasks, {args.n_prompts} clean + {args.n_prompts} corrupted prompts, seeds "
          f"{seeds}, {args.threads} thread(s), load average {os.getloadavg()[0]:.2f}\n", flush=True)  # fmt: skip
    header = (f"{'task':<20}{'grad~exact rho':>15}{'r':>7}{'top10':>7}{'top1':>6}{'seed~seed rho':>15}{'r':>7}"
              f"{'top10':>7}{'top1':>6}{'exact s':>9}{'grad s':>8}")  # fmt: skip
    print(header + "\n" + "-" * len(header))
    rows = []
    for name in names:
        tables = attribution_tables(lm, executor, builtin_task(name), seeds, args.n_prompts)
        g, s = agreement(tables["exact"]["aie"], tables["gradient"]["aie"]), \
            agreement(tables["exact"]["aie"], tables["exact_seed2"]["aie"])  # fmt: skip
        rows.append({"task": name, "gradient_vs_exact": g, "seed_vs_seed": s,
                     "exact_s": tables["exact"]["seconds"], "gradient_s": tables["gradient"]["seconds"]})  # fmt: skip
        print(f"{name:<20}{g['spearman']:>15.2f}{g['pearson']:>7.2f}{g['top10_overlap']:>7}{g['top1_same']!s:>6}"
              f"{s['spearman']:>15.2f}{s['pearson']:>7.2f}{s['top10_overlap']:>7}{s['top1_same']!s:>6}"
              f"{rows[-1]['exact_s']:>9.1f}{rows[-1]['gradient_s']:>8.1f}", flush=True)  # fmt: skip

    def mean(key, sub):
        return statistics.fmean(float(r[key][sub]) for r in rows)

    print(f"{'mean':<20}{mean('gradient_vs_exact', 'spearman'):>15.2f}{mean('gradient_vs_exact', 'pearson'):>7.2f}"
          f"{mean('gradient_vs_exact', 'top10_overlap'):>7.1f}{mean('gradient_vs_exact', 'top1_same'):>6.2f}"
          f"{mean('seed_vs_seed', 'spearman'):>15.2f}{mean('seed_vs_seed', 'pearson'):>7.2f}"
          f"{mean('seed_vs_seed', 'top10_overlap'):>7.1f}{mean('seed_vs_seed', 'top1_same'):>6.2f}"
          f"{statistics.fmean(r['exact_s'] for r in rows):>9.1f}"
          f"{statistics.fmean(r['gradient_s'] for r in rows):>8.1f}")
    fv = None
    if args.runs:
        exact_dir, gradient_dir = (Path(p) for p in args.runs.split(","))
        exact, gradient = fv_accuracy(exact_dir), fv_accuracy(gradient_dir)
        both = [t for t in exact if t in gradient]
        fv = {t: {"exact": exact[t], "gradient": gradient[t]} for t in both}
        print(f"\nfunction vector test accuracy, heads from exact / gradient attribution ({exact_dir} / "
              f"{gradient_dir})")
        for t in both:
            print(f"{t:<20}{exact[t]:>8.2f}{gradient[t]:>8.2f}")
        if both:
            print(f"{'mean':<20}{statistics.fmean(exact[t] for t in both):>8.2f}"
                  f"{statistics.fmean(gradient[t] for t in both):>8.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows, "fv_accuracy": fv}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
