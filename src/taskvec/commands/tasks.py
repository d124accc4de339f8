"""``taskvec tasks``: list the built-in tasks."""

from __future__ import annotations

import argparse

NAME = "tasks"
HELP = "list the built-in tasks"
ORDER = 99


def add_arguments(parser: argparse.ArgumentParser) -> None:
    del parser  # no options


def run(args: argparse.Namespace) -> None:
    from taskvec.tasks.registry import ALL_TASKS, PAPER_TASKS, builtin_task

    for name in ALL_TASKS:
        task = builtin_task(name)
        group = "paper" if name in PAPER_TASKS else "extra"
        print(f"{name:<22}{task.category:<13}{group:<7}{len(task.pairs):>5} pairs  {task.description}")
