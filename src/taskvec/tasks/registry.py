"""Built-in tasks (the paper's 18 and the reference code's extras) and user task files."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Sequence
from functools import cache
from importlib.resources import files
from pathlib import Path

from taskvec.errors import TaskDataError
from taskvec.tasks.definitions import CATEGORIES, SCORINGS, Pair, Task
from taskvec.tasks.generators import algorithmic_tasks

PAPER_TASKS: tuple[str, ...] = (
    "next_letter", "prev_letter", "list_first", "list_last", "to_upper", "to_lower",
    "fr_en", "es_en", "en_fr", "en_es",
    "present_gerund", "present_past", "plural_singular", "antonyms",
    "country_capital", "person_language", "location_continent", "location_religion",
)  # fmt: skip
EXTRA_TASKS: tuple[str, ...] = (
    "singular_plural", "present_past_perfect", "en_it", "it_en",
    "list_min", "list_max", "list_length", "char_to_int", "int_to_char",
)  # fmt: skip
ALL_TASKS = PAPER_TASKS + EXTRA_TASKS
TASK_GROUPS = {"paper": PAPER_TASKS, "extras": EXTRA_TASKS, "all": ALL_TASKS}


@cache
def builtin_task(name: str) -> Task:
    """A built-in task by name (algorithmic ones are generated, the others read from data/)."""
    if name not in ALL_TASKS:
        raise TaskDataError(
            f"unknown task {name!r}; known tasks: {', '.join(ALL_TASKS)} (or groups: paper, extras, all)"
        )
    generated = algorithmic_tasks()
    if name in generated:
        return generated[name]
    resource = files("taskvec.tasks").joinpath("data", f"{name}.json")
    return _task_from_document(json.loads(resource.read_text(encoding="utf-8")), name, "builtin")


def resolve_task_names(spec: Iterable[str]) -> list[str]:
    """Expand group names and commas ("paper,list_min") into task names, keeping order, no repeats."""
    names: list[str] = []
    for item in spec:
        for part in filter(None, (p.strip() for p in item.split(","))):
            for name in TASK_GROUPS.get(part, (part,)):
                builtin_task(name)  # raises for unknown names
                if name not in names:
                    names.append(name)
    return names


#: Keys of a task file that describe the task rather than a pair.
HEADER_KEYS = ("name", "category", "scoring", "description", "provenance")


def load_task_file(path: str | Path, category: str = "custom", scoring: str | None = None) -> Task:
    """A task from a JSON, JSONL or CSV file of input/output pairs; every format can set the task's
    name, category, scoring, description and provenance (``scoring`` defaults by category:
    :func:`default_scoring`).

    JSON: a list of {"input", "output"[, "alternatives"]} objects, or an object with "pairs" and those
    keys. JSONL: one pair object per line, optionally after a first line holding only those keys
    (``{"category": "knowledge"}``). CSV: a header with "input" and "output" columns and optionally
    "alternatives" (separated by "|"), optionally after lines ``# key: value`` (``# scoring: prefix``).
    """
    path = Path(path)
    if not path.is_file():
        raise TaskDataError(f"task file {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    try:
        text = path.read_text(encoding="utf-8-sig")
        if suffix == ".json":
            document = json.loads(text)
            if isinstance(document, list):
                document = {"pairs": document}
        elif suffix == ".jsonl":
            document = _jsonl_document(text, path)
        elif suffix == ".csv":
            document = _csv_document(text, path)
        else:
            raise TaskDataError(f"task file {str(path)!r} has suffix {suffix!r}; expected .json, .jsonl or .csv")
    except (ValueError, csv.Error, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise TaskDataError(f"task file {str(path)!r} is not valid {suffix[1:].upper()}: {exc}") from exc
    except OSError as exc:
        raise TaskDataError(f"task file {str(path)!r} cannot be read: {exc.strerror or exc}") from exc
    if not isinstance(document, dict):
        raise TaskDataError(f"task file {str(path)!r}: expected a list of pairs or an object with 'pairs'")
    document.setdefault("name", path.stem)
    document.setdefault("category", category)
    if document.get("scoring") is None:
        document["scoring"] = scoring or default_scoring(document["category"])
    return _task_from_document(document, str(path), str(path))


def default_scoring(category: object) -> str:
    """The scoring a task file gets when it sets none: prefix for knowledge tasks (as the reference),
    alternatives for translation (the output or an alternative), exact otherwise."""
    return {"knowledge": "prefix", "translation": "alternatives"}.get(str(category), "exact")


def _jsonl_document(text: str, path: Path) -> dict:
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    header: dict = {}
    if rows and isinstance(rows[0], dict) and not {"input", "output"} & set(rows[0]):
        header, rows = rows[0], rows[1:]
        _check_header_keys(header, path)
    return {**header, "pairs": rows}


def _csv_document(text: str, path: Path) -> dict:
    lines = text.splitlines()
    header: dict = {}
    while lines and (not lines[0].strip() or lines[0].lstrip().startswith("#")):
        line = lines.pop(0).lstrip().lstrip("#").strip()
        if line:
            key, sep, value = line.partition(":")
            if not sep:
                raise TaskDataError(f"task file {str(path)!r}: comment line {line!r} is not '# key: value'")
            header[key.strip()] = value.strip()
    _check_header_keys(header, path)
    return {**header, "pairs": _csv_rows(lines, path)}


def _check_header_keys(header: dict, path: Path) -> None:
    unknown = sorted(set(header) - set(HEADER_KEYS))
    if unknown:
        raise TaskDataError(
            f"task file {str(path)!r}: unknown task key(s) {', '.join(map(repr, unknown))}; "
            f"expected {', '.join(HEADER_KEYS)}"
        )


def _csv_rows(lines: list[str], path: Path) -> list[dict]:
    reader = csv.DictReader(lines)
    if not reader.fieldnames or not {"input", "output"} <= set(reader.fieldnames):
        raise TaskDataError(f"task file {str(path)!r}: CSV header must have 'input' and 'output' columns")
    rows = []
    for row in reader:
        alts = [a for a in (row.get("alternatives") or "").split("|") if a]
        rows.append({"input": row["input"], "output": row["output"], "alternatives": alts})
    return rows


def _task_from_document(doc: dict, where: str, source: str) -> Task:
    category = doc.get("category", "custom")
    scoring = doc.get("scoring", "exact")
    if scoring not in SCORINGS:
        raise TaskDataError(f"{where}: scoring {scoring!r} is not one of {', '.join(SCORINGS)}")
    if category not in (*CATEGORIES, "custom"):
        raise TaskDataError(f"{where}: category {category!r} is not one of {', '.join((*CATEGORIES, 'custom'))}")
    pairs = _pairs(doc.get("pairs"), where)
    return Task(
        name=_task_name(doc.get("name"), where),
        category=category,
        description=str(doc.get("description", "")),
        scoring=scoring,
        pairs=pairs,
        provenance=str(doc.get("provenance", "")),
        source=source,
    )


def _pairs(raw: object, where: str) -> tuple[Pair, ...]:
    if not isinstance(raw, list) or not raw:
        raise TaskDataError(f"{where}: expected a non-empty list of pairs")
    pairs: list[Pair] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(raw, start=1):
        if not isinstance(item, dict):
            raise TaskDataError(f"{where}: pair {i} is {item!r}; expected an object with 'input' and 'output'")
        missing = [k for k in ("input", "output") if not isinstance(item.get(k), str) or not item[k].strip()]
        if missing:
            raise TaskDataError(
                f"{where}: pair {i} ({_short(item)}) is missing field(s) {', '.join(missing)}; "
                "expected non-empty strings"
            )
        for key in ("input", "output"):
            _check_text(item[key], f"{where}: pair {i} {key}")
        x, y = item["input"].strip(), item["output"].strip()
        if x in seen:
            raise TaskDataError(f"{where}: pair {i} repeats input {x!r} (first seen in pair {seen[x]})")
        seen[x] = i
        alternatives = item.get("alternatives") or []
        if not isinstance(alternatives, list) or not all(isinstance(a, str) for a in alternatives):
            raise TaskDataError(f"{where}: pair {i}: 'alternatives' must be a list of strings")
        for a in alternatives:
            _check_text(a, f"{where}: pair {i} alternative")
        pairs.append(Pair(x, y, tuple(a.strip() for a in alternatives if a.strip() and a.strip() != y)))
    return tuple(pairs)


def _short(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "...'"


def _check_text(value: str, what: str) -> None:
    """Refuse text the prompt format cannot hold: line breaks (they separate demonstrations) and
    characters that have no UTF-8 encoding (lone surrogates)."""
    if "\n" in value or "\r" in value:
        raise TaskDataError(f"{what} {_short(value)} contains a line break; line breaks separate demonstrations")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise TaskDataError(f"{what} {_short(value)} is not valid Unicode text ({exc.reason})") from None


def _task_name(name: object, where: str) -> str:
    if not isinstance(name, str) or not name.strip() or len(name) > 200:
        raise TaskDataError(f"{where}: task name {_short(name)} must be a non-empty string of at most 200 characters")
    if any(not c.isprintable() for c in name):
        raise TaskDataError(f"{where}: task name {_short(name)} contains control characters")
    _check_text(name, f"{where}: task name")
    return name.strip()


def load_tasks(names: Sequence[str], task_files: Sequence[str | Path] = ()) -> list[Task]:
    tasks = [builtin_task(n) for n in resolve_task_names(names)] + [load_task_file(f) for f in task_files]
    taken: set[str] = set()
    for task in tasks:
        if task.name in taken:
            raise TaskDataError(f"two tasks are named {task.name!r}; rename the task file")
        taken.add(task.name)
    return tasks
