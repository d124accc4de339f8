"""``taskvec compare``: several runs side by side."""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "compare"
HELP = "model x (BL, TV, ICL) table and layer-curve overlay of several runs"
ORDER = 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", help="run directories (each holds a results.json)")
    parser.add_argument("--out", default="taskvec-comparison", help="output directory")


def run(args: argparse.Namespace) -> None:
    from taskvec.report import write_comparison

    paths = write_comparison(Path(args.out), [Path(r) for r in args.runs])
    print(f"comparison -> {paths['md']} and {paths['html']}")
