"""``taskvec conflict``: task B's vector patched into task A's full ICL prompt; scored against A and B."""

from __future__ import annotations

import argparse

from taskvec.commands._analysis import add_common_arguments, layer_options, progress_bar
from taskvec.commands._common import require_positive

NAME = "conflict"
HELP = "conflicting tasks: theta of task B patched into task A's full ICL prompt"
ORDER = 4


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pairs", default=None, help="A:B pairs, comma-separated (default: the paper's five)")
    parser.add_argument("--n-sets", type=int, default=50, help="prompts per pair (default 50)")
    parser.add_argument("--min-queries", type=int, default=10,
                        help="refuse a pair with fewer distinct queries valid for both tasks (default 10)")  # fmt: skip
    add_common_arguments(parser, "taskvec-analyses/conflict")


def run(args: argparse.Namespace) -> None:
    from taskvec.experiments.analysis_setup import prepare_out_dir
    from taskvec.experiments.conflict import PAPER_PAIRS, ConflictConfig, parse_pairs, run_conflict
    from taskvec.report.analysis_render import write_conflict

    require_positive(args, "n_sets", "min_queries")
    pairs = parse_pairs(args.pairs) if args.pairs is not None else PAPER_PAIRS
    config = ConflictConfig(model=args.model, pairs=pairs, n_sets=args.n_sets, shots=args.shots,
                            n_dummy=args.n_dummy, seed=args.seed, min_queries=args.min_queries,
                            layers=layer_options(args), dtype=args.dtype, batch_size=args.batch_size)  # fmt: skip
    out = prepare_out_dir(args.out)
    with progress_bar("conflict") as step:
        results, rows = run_conflict(config, progress=step)
    paths = write_conflict(out, results, rows)
    for p in results["pairs"]:
        accuracy = {k: p[k]["accuracy"] for k in ("icl_vs_a", "patched_vs_a", "patched_vs_b")}
        print(f"{p['a']} <- theta({p['b']}) @ layer {p['layer_b']}: ICL vs A {accuracy['icl_vs_a']:.2f}  "
              f"patched vs A {accuracy['patched_vs_a']:.2f}  vs B {accuracy['patched_vs_b']:.2f}")  # fmt: skip
    print(f"-> {paths['html']}")
