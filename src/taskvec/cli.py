"""The ``taskvec`` command line: one sub-command per module of ``taskvec.commands``."""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys
from types import ModuleType

import taskvec.commands
from taskvec.errors import TaskvecError


def _command_modules() -> list[ModuleType]:
    modules = [
        importlib.import_module(f"taskvec.commands.{info.name}")
        for info in pkgutil.iter_modules(taskvec.commands.__path__)
        if not info.name.startswith("_")
    ]
    return sorted(modules, key=lambda m: (getattr(m, "ORDER", 50), m.NAME))


def _parser(modules: list[ModuleType]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="taskvec", description="In-context-learning task vectors (Hendel et al. 2023)"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log details")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in modules:
        module.add_arguments(sub.add_parser(module.NAME, help=module.HELP, description=module.HELP))
    return parser


def main(argv: list[str] | None = None) -> int:
    modules = _command_modules()
    args = _parser(modules).parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    if not args.verbose:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    handlers = {module.NAME: module.run for module in modules}
    try:
        handlers[args.command](args)
    except TaskvecError as exc:
        print(f"taskvec: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("taskvec: interrupted; `taskvec run` resumes from its finished tasks", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
