"""The ``taskvec`` command line: one sub-command per module of ``taskvec.commands``."""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys
from types import ModuleType

import taskvec.commands
from taskvec.commands import _build_progress
from taskvec.errors import TaskvecError
from taskvec.threads import configure_threads


def _command_modules() -> list[ModuleType]:
    modules = [
        importlib.import_module(f"taskvec.commands.{info.name}")
        for info in pkgutil.iter_modules(taskvec.commands.__path__)
        if not info.name.startswith("_")
    ]
    return sorted(modules, key=lambda m: (getattr(m, "ORDER", 50), m.NAME))


class _UsageError(Exception):
    """A command line argparse refused (raised instead of argparse's usage dump and exit)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line and exit status 2, like every other bad input
        where = "" if self.prog == "taskvec" else f"{self.prog.removeprefix('taskvec ')}: "
        raise _UsageError(f"{where}{message} (see `{self.prog} --help`)")


class _HelpFormatter(argparse.HelpFormatter):
    """Shows each option's default after its help text, unless the text already says it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (
            "default" in text
            or default in (None, False, argparse.SUPPRESS, [])
            or action.option_strings == []
            or isinstance(action, argparse._HelpAction)
        ):
            return action.help
        return f"{text} (default: %(default)s)"


def _parser(modules: list[ModuleType]) -> argparse.ArgumentParser:
    parser = _Parser(prog="taskvec", description="In-context-learning task vectors (Hendel et al. 2023)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log details")
    sub = parser.add_subparsers(dest="command", title="commands", metavar="COMMAND")
    for module in modules:
        module.add_arguments(
            sub.add_parser(module.NAME, help=module.HELP, description=module.HELP, formatter_class=_HelpFormatter)
        )
    return parser


def main(argv: list[str] | None = None) -> int:
    modules = _command_modules()
    parser = _parser(modules)
    try:
        args = parser.parse_args(argv)
    except _UsageError as exc:
        print(f"taskvec: error: {_one_line(str(exc))}", file=sys.stderr)
        return 2
    except SystemExit as exc:  # --help and --version exit through argparse
        return exc.code if isinstance(exc.code, int) else 0
    if args.command is None:  # no command: say which there are
        parser.print_help(sys.stderr)
        print("\ntaskvec: error: name a command, e.g. `taskvec demo`", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    build_progress = _build_progress.install()
    if not args.verbose:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    handlers = {module.NAME: module.run for module in modules}
    try:
        if hasattr(args, "threads"):
            configure_threads(args.threads)
        handlers[args.command](args)
    except TaskvecError as exc:
        print(f"taskvec: error: {_one_line(str(exc))}", file=sys.stderr)
        return 2
    except OSError as exc:  # the machine, not the input: a full disk, a lost mount... nothing partial is left
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"taskvec: error: {exc.strerror or exc}{where}; finished work is kept, rerun to resume", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("taskvec: interrupted; `taskvec run` resumes from its finished tasks", file=sys.stderr)
        return 130
    finally:
        build_progress.close_bar()
    return 0


def _one_line(message: str) -> str:
    return " ".join(message.split())


if __name__ == "__main__":
    sys.exit(main())
