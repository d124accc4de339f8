"""What the explorer's input boxes hold: demonstrations ``input -> output`` and queries ``input [-> gold]``.

Parsing is strict and size-limited, and every problem is one line that names the line it is on, so the
page can show it next to the box instead of a traceback.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from taskvec.errors import TaskvecError

ARROW = "->"
MAX_DEMONSTRATIONS = 64
MAX_QUERIES = 200
MAX_LINE_CHARS = 200
MAX_TEXT_CHARS = 100_000  # a whole box; more is refused before it is split into lines


class ExploreInputError(TaskvecError):
    """Text typed into the explorer that cannot be used (the message is shown next to the box)."""


@dataclass(frozen=True)
class Query:
    input: str
    gold: str | None = None  # the expected answer, when the user (or the task) gave one


@dataclass(frozen=True)
class ParsedLines:
    """Parsed box contents and notices about what was skipped (shown, not fatal)."""

    items: tuple = ()
    notices: tuple[str, ...] = field(default=())


def _lines(text: object, what: str, limit: int) -> tuple[list[tuple[int, str]], list[str]]:
    """The non-blank lines of a box as (1-based line number, stripped text), and notices."""
    if not isinstance(text, str):
        raise ExploreInputError(f"{what}: expected text, got {type(text).__name__}")
    if len(text) > MAX_TEXT_CHARS:
        raise ExploreInputError(f"{what}: {len(text)} characters pasted; at most {MAX_TEXT_CHARS} are accepted")
    raw = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    while raw and not raw[-1].strip():  # trailing newlines are not worth a notice
        raw.pop()
    lines = [(i, line.strip()) for i, line in enumerate(raw, start=1) if line.strip()]
    notices = []
    blank = len(raw) - len(lines)
    if blank:
        notices.append(f"{what}: skipped {blank} empty line{'s' if blank > 1 else ''}")
    if not lines:
        form = "`input -> output`" if what == "demonstrations" else "`input` or `input -> gold`"
        raise ExploreInputError(f"{what}: nothing entered; write one per line as {form}")
    if len(lines) > limit:
        raise ExploreInputError(f"{what}: {len(lines)} lines; at most {limit} are accepted")
    for number, line in lines:
        if len(line) > MAX_LINE_CHARS:
            raise ExploreInputError(f"{what} line {number}: {len(line)} characters; at most {MAX_LINE_CHARS}")
        if any(not c.isprintable() for c in line):
            raise ExploreInputError(f"{what} line {number}: contains control characters")
    return lines, notices


def _split(line: str) -> tuple[str, str] | None:
    if ARROW not in line:
        return None
    x, y = line.split(ARROW, 1)
    return x.strip(), y.strip()


def parse_demonstrations(text: object) -> ParsedLines:
    """``input -> output`` lines into (input, output) pairs; repeated inputs are refused."""
    lines, notices = _lines(text, "demonstrations", MAX_DEMONSTRATIONS)
    pairs: list[tuple[str, str]] = []
    seen: dict[str, int] = {}
    for number, line in lines:
        split = _split(line)
        if split is None:
            raise ExploreInputError(f"demonstrations line {number}: {_short(line)} has no `->`; "
                                    "write `input -> output`")  # fmt: skip
        x, y = split
        if not x or not y:
            side = "input" if not x else "output"
            raise ExploreInputError(f"demonstrations line {number}: {_short(line)} has an empty {side}")
        if x in seen:
            raise ExploreInputError(f"demonstrations line {number}: input {_short(x)} repeats line {seen[x]}")
        seen[x] = number
        pairs.append((x, y))
    return ParsedLines(tuple(pairs), tuple(notices))


def parse_queries(text: object) -> ParsedLines:
    """``input`` or ``input -> gold`` lines into :class:`Query` objects."""
    lines, notices = _lines(text, "queries", MAX_QUERIES)
    queries = []
    for number, line in lines:
        split = _split(line)
        if split is None:
            queries.append(Query(line))
            continue
        x, gold = split
        if not x:
            raise ExploreInputError(f"queries line {number}: {_short(line)} has an empty input")
        queries.append(Query(x, gold or None))
    return ParsedLines(tuple(queries), tuple(notices))


def format_pairs(pairs) -> str:
    """Pairs back into box text, one ``input -> output`` per line."""
    return "\n".join(f"{x} {ARROW} {y}" for x, y in pairs)


def _short(text: str, limit: int = 40) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")
