"""``taskvec robustness``: many task vectors per task; t-SNE / PCA, silhouette, cosine distances."""

from __future__ import annotations

import argparse

from taskvec.commands._analysis import add_common_arguments, layer_options, progress_bar
from taskvec.commands._common import require_positive

NAME = "robustness"
HELP = "do task vectors from different demonstrations cluster by task? (t-SNE, PCA, distances)"
ORDER = 3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tasks", nargs="*", default=["paper"], help="task names or groups (default: paper)")
    parser.add_argument("--n-vectors", type=int, default=50, help="task vectors per task (default 50)")
    parser.add_argument("--perplexity", type=float, default=30.0, help="t-SNE perplexity (default 30)")
    add_common_arguments(parser, "taskvec-analyses/robustness")


def run(args: argparse.Namespace) -> None:
    from taskvec.experiments.analysis_setup import prepare_out_dir
    from taskvec.experiments.robustness import RobustnessConfig, check_sizes, run_robustness
    from taskvec.report.analysis_render import write_robustness
    from taskvec.report.render import fmt
    from taskvec.tasks.registry import resolve_task_names

    require_positive(args, "n_vectors")
    tasks = tuple(resolve_task_names(args.tasks))
    check_sizes(len(tasks), args.n_vectors, args.perplexity)
    config = RobustnessConfig(model=args.model, tasks=tasks, n_vectors=args.n_vectors, shots=args.shots,
                              n_dummy=args.n_dummy, seed=args.seed, perplexity=args.perplexity,
                              layers=layer_options(args), dtype=args.dtype, batch_size=args.batch_size)  # fmt: skip
    out = prepare_out_dir(args.out)
    with progress_bar("robustness") as step:
        results, vectors, metadata = run_robustness(config, progress=step)
    paths = write_robustness(out, results, vectors, metadata)
    sil = results["silhouette"]
    print(f"{len(tasks)} tasks x {args.n_vectors} vectors: silhouette by task {fmt(sil['task'], 3)}, "
          f"by category {fmt(sil['category'], 3)}  -> {paths['html']}")  # fmt: skip
