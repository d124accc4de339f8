"""Multi-token answers on the default model: exact match of the full answer, task vector vs regular ICL vs
zero-shot, for answers of one token and of two or more (see taskvec.experiments.multitoken; `taskvec
multitoken` runs the same evaluation with every variant, files and a report).

    python bench/bench_multitoken.py [--model gemma-3-270m] [--tasks country_capital,...] [--n-test 30]
                                     [--max-new-tokens 10] [--seed 41] [--json out.json]

Prints one row per (task, answer length) with the layer chosen on dev queries, accuracy and n, then the
means, and a few task-vector failures. The task vector and ICL use the same 5 demonstrations per query.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import taskvec
from taskvec.experiments.multitoken import DEFAULT_VARIANT, METHODS, MultiTokenConfig, evaluate_multitoken
from taskvec.tasks.registry import builtin_task

DEFAULT_TASKS = "country_capital,location_continent,en_fr,en_es,en_it"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--tasks", default=DEFAULT_TASKS)
    parser.add_argument("--n-test", type=int, default=30, help="test queries per answer-length group")
    parser.add_argument("--n-dev", type=int, default=20)
    parser.add_argument("--max-new-tokens", type=int, default=10)
    parser.add_argument("--seed", type=int, default=41)
    parser.add_argument("--json", default=None, help="write all results (with every answer) here")
    args = parser.parse_args()
    config = MultiTokenConfig(n_test=args.n_test, n_dev=args.n_dev, max_new_tokens=args.max_new_tokens, seed=args.seed)
    lm = taskvec.load_model(args.model)
    started = time.perf_counter()
    results = []
    for name in args.tasks.split(","):
        print(f"... {name}", file=sys.stderr)
        results.append(evaluate_multitoken(lm, builtin_task(name), config))
    seconds = time.perf_counter() - started

    print(f"model {args.model}, {config.shots} demonstrations, greedy up to {config.max_new_tokens} tokens, "
          f"exact match of the full answer; {seconds:.0f} s\n")  # fmt: skip
    header = f"{'task':<20}{'answer':>8}{'layer':>7}{'n':>5}{'TV':>8}{'ICL':>8}{'zero-shot':>11}{'TV/ICL':>8}"
    print(header + "\n" + "-" * len(header))
    sums: dict[str, dict[str, list[float]]] = {}
    for r in results:
        for group, g in r["groups"].items():
            acc = {m: g[m]["accuracy"] for m in METHODS}
            ratio = f"{acc['task_vector'] / acc['regular']:.2f}" if acc["regular"] else "-"
            print(f"{r['task']:<20}{group + ' tok':>8}{r['layer']:>7}{g['task_vector']['n']:>5}"
                  f"{acc['task_vector']:>8.2f}{acc['regular']:>8.2f}{acc['zero_shot']:>11.2f}{ratio:>8}")  # fmt: skip
            for m in METHODS:
                sums.setdefault(group, {}).setdefault(m, []).append(acc[m])
    for group, by_method in sums.items():
        mean = {m: sum(v) / len(v) for m, v in by_method.items()}
        ratio = f"{mean['task_vector'] / mean['regular']:.2f}" if mean["regular"] else "-"
        print(f"{'mean':<20}{group + ' tok':>8}{'':>7}{'':>5}{mean['task_vector']:>8.2f}{mean['regular']:>8.2f}"
              f"{mean['zero_shot']:>11.2f}{ratio:>8}")  # fmt: skip
    print("\nsome task-vector answers on multi-token gold answers (query: gold | TV | ICL):")
    for r in results:
        examples = r["groups"].get("2+", {}).get("examples", [])[:3]
        for e in examples:
            print(f"  {r['task']}: {e['query']!r}: {e['gold']!r} | {e[DEFAULT_VARIANT]!r} | {e['icl_format']!r}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"model": args.model, "config": vars(config), "seconds": seconds, "results": results}, fh,
                      ensure_ascii=False, indent=1)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
