"""``taskvec grid-summary``: all finished runs of a grid in one table and one plot."""

from __future__ import annotations

import argparse

NAME = "grid-summary"
HELP = "gather the results of a `taskvec grid` directory into summary.csv/.md/.html and summary.png"
ORDER = 4


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("grid_dir", help="the --out directory of `taskvec grid`")
    parser.add_argument("--out", default=None, help="where to write the summary (default: the grid directory)")


def run(args: argparse.Namespace) -> None:
    from taskvec.grid.summary import write_summary

    paths = write_summary(args.grid_dir, args.out)
    print(f"summary -> {paths['md']}, {paths['html']}, {paths['csv']}, {paths['png']}")
