"""``taskvec multitoken``: task vectors that answer in full (multi-token answers, prompts in other words)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from taskvec.commands._common import (
    add_dtype_argument,
    add_model_argument,
    add_threads_argument,
    require_positive,
    task_progress,
)
from taskvec.errors import TaskvecError

NAME = "multitoken"
HELP = "multi-token answers: task-vector decoding variants vs ICL vs zero-shot (exact match, token F1)"
ORDER = 2
#: Built-in tasks with multi-token answers on the bundled models (knowledge and translation).
MULTITOKEN_TASKS = ("country_capital", "location_continent", "location_religion", "person_language", "en_fr", "en_es",
                    "fr_en", "es_en")  # fmt: skip


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_argument(parser)
    parser.add_argument("--tasks", nargs="*", default=None,
                        help=f"task names (default: {', '.join(MULTITOKEN_TASKS)})")  # fmt: skip
    parser.add_argument("--task-file", action="append", default=[], help="extra task from a JSON/JSONL/CSV of pairs")
    parser.add_argument("--shots", type=int, default=5, help="demonstrations per query")
    parser.add_argument("--n-dev", type=int, default=20, help="dev queries (choose the layer)")
    parser.add_argument("--n-test", type=int, default=30, help="test queries per answer length (1 token, 2+)")
    parser.add_argument("--max-new-tokens", type=int, default=10, help="tokens decoded at most")
    parser.add_argument("--seed", type=int, default=41, help="sampling seed")
    parser.add_argument(
        "--with-fv", action="store_true",
        help="also a function vector per task (head attribution and dev choice: minutes per task)",
    )  # fmt: skip
    parser.add_argument(
        "--methods", default="tv",
        help="methods compared: tv (always), fv (as --with-fv), icv, meandiff, shift (every-position methods: "
             "each decoded with its edits at every position, prompt and generated tokens, and at prompt "
             "positions only). Example: --methods tv,fv,icv,meandiff",
    )  # fmt: skip
    add_dtype_argument(parser)
    add_threads_argument(parser)
    parser.add_argument("--out", default=None, help="output directory (default: taskvec-runs/multitoken-<model>)")


def run(args: argparse.Namespace) -> None:
    from taskvec.core.methods import EVERY_POSITION, FunctionVectorMethod, parse_methods
    from taskvec.engine.generation import check_max_new_tokens
    from taskvec.experiments.multitoken import MultiTokenConfig
    from taskvec.experiments.multitoken_run import run_multitoken
    from taskvec.models.loading import check_model_spec
    from taskvec.tasks.registry import load_tasks, resolve_task_names

    require_positive(args, "shots", "n_dev", "n_test")
    methods = parse_methods(args.methods)
    check_max_new_tokens(args.max_new_tokens)
    names = args.tasks if args.tasks is not None else ([] if args.task_file else list(MULTITOKEN_TASKS))
    tasks = load_tasks(tuple(resolve_task_names(names)), args.task_file)
    if not tasks:
        raise TaskvecError("no tasks: name built-in tasks with --tasks or give --task-file")
    check_model_spec(args.model)
    out = Path(args.out) if args.out else Path("taskvec-runs") / f"multitoken-{Path(args.model).name}"
    config = MultiTokenConfig(shots=args.shots, n_dev=args.n_dev, n_test=args.n_test,
                              max_new_tokens=args.max_new_tokens, seed=args.seed,
                              with_fv=args.with_fv or FunctionVectorMethod.name in methods,
                              every=tuple(m for m in methods if m in EVERY_POSITION))  # fmt: skip
    with task_progress(f"multitoken {args.model}") as progress:
        results = run_multitoken(args.model, tasks, config, out, dtype=args.dtype, progress=progress)
    for group, by_name in sorted(results["summary"]["variants"].items()):
        icl = by_name.get("icl_format", {}).get("exact")
        vectors = [n for n in by_name if not n.startswith(("icl_", "zero_"))]
        best = max(vectors, key=lambda n: by_name[n]["exact"] or 0)
        print(f"{group} token(s): ICL {icl or 0:.2f}, best vector variant {best} "
              f"{by_name[best]['exact'] or 0:.2f}", file=sys.stderr)  # fmt: skip
    print(f"-> {out}/report.html")
