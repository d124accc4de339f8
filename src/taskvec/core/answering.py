"""How a vector answers in full: where it is applied while an answer is decoded, and when decoding stops.

The paper patches theta once, at the bare query's last position, and scores one token. For answers of
several tokens the vector must also be carried past the first one. Decoding modes:

- ``first`` (the paper's): the edit on the prompt's last position only;
- ``every_replace``: also replace block L's output at each generated token's position with the vector;
- ``every_delta``: also *add*, at each generated position, the difference between the vector and block L's
  unpatched output at the prompt's last position (the shift the patch made there), scaled by ``alpha``.

Stop rules (:class:`taskvec.core.decoding.StopRule`): ``newline`` (EOS, special tokens or a newline),
``format`` (also the template's own text, e.g. ``example:`` and ``->``: where the demonstrations' format
says the next demonstration begins) and ``demos`` (also punctuation no demonstrated answer contains, and at
most one token more than the longest demonstrated answer). Measured with ``taskvec multitoken``
(docs/multitoken.md): adding the vector at generated positions made answers worse on gemma-3-270m, so the
default mode is the paper's single patch; ``demos`` was the best stop rule (the default where the
demonstrations are known).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from taskvec.core.decoding import DEFAULT_STOP, StopRule
from taskvec.core.interfaces import Executor
from taskvec.core.sites import GENERATED, Add, Edit, Replace, RowEdits, Site, row_edits
from taskvec.errors import TaskvecError
from taskvec.prompts import PromptTemplate

MODES = ("first", "every_replace", "every_delta")
STOPS = ("newline", "format", "demos")
#: The default of ``taskvec apply`` and the API (chosen by the measurement in docs/multitoken.md).
DEFAULT_MODE = "first"
DEFAULT_STOP_RULE = "demos"


def stop_rule(name: str, template: PromptTemplate, answers: Sequence[str] = (), tokenizer=None) -> StopRule:
    """``newline``, ``format`` (the template's text) or ``demos`` (the format, plus the punctuation and the
    length the demonstrated ``answers`` show, their lengths counted by ``tokenizer`` as they stand in a
    demonstration, after ``answer_prefix``; see :meth:`StopRule.from_demonstrations`)."""
    if name == "newline":
        return DEFAULT_STOP
    if name == "format":
        return StopRule.from_template(template)
    if name == "demos":
        if tokenizer is None:
            raise TaskvecError("the 'demos' stop rule needs the tokenizer that counts the demonstrated answers")
        counts = [len(tokenizer(template.answer_prefix + a, add_special_tokens=False)["input_ids"]) for a in answers]
        return StopRule.from_demonstrations(template, answers, counts)
    raise TaskvecError(f"unknown stop rule {name!r}; expected one of {', '.join(STOPS)}")


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise TaskvecError(f"unknown decoding mode {mode!r}; expected one of {', '.join(MODES)}")
    return mode


def step_edits(
    executor: Executor,
    prompts: Sequence[str],
    first: Sequence[RowEdits],
    mode: str,
    alpha: float = 1.0,
) -> list[list[Edit]] | None:
    """The edits made at every generated token (sites at :data:`~taskvec.core.sites.GENERATED` positions),
    given each prompt's edits at its last prompt token (a Replace of block L's output by theta, or an Add of
    a function vector) under ``mode``; None for ``first``. Edits that already act at generated positions
    (every-position methods) are left to themselves."""
    check_mode(mode)
    if mode == "first":
        return None
    rows = [[e for e in row_edits(entry) if e.site.one_token] for entry in first]
    if mode == "every_replace":
        return [[Replace(_generated(e.site), e.value) if isinstance(e, Replace)
                 else Add(_generated(e.site), alpha * e.value) for e in row] for row in rows]  # fmt: skip
    flat = [(i, e) for i, row in enumerate(rows) for e in row if isinstance(e, Replace)]
    states = _unpatched(executor, [prompts[i] for i, _ in flat], [e.site for _, e in flat])
    shifts: list[list[Edit]] = [[] for _ in rows]
    replaced = iter(range(len(flat)))
    for i, row in enumerate(rows):
        for edit in row:
            if isinstance(edit, Replace):
                delta = edit.value.float() - states[next(replaced)]
                shifts[i].append(Add(_generated(edit.site), alpha * delta))
            else:  # an added vector is its own shift
                shifts[i].append(Add(_generated(edit.site), alpha * edit.value))
    return shifts


def with_steps(first: Sequence[RowEdits], steps: Sequence[Sequence[Edit]] | None) -> list[list[Edit]]:
    """Each row's prompt edits followed by its edits at generated tokens (none when ``steps`` is None)."""
    if steps is None:
        return [list(row_edits(entry)) for entry in first]
    return [[*row_edits(entry), *more] for entry, more in zip(first, steps)]


def _generated(site: Site) -> Site:
    """The same layer and head, at every generated token."""
    return Site(site.layer, GENERATED, site.head)


def _unpatched(executor: Executor, prompts: Sequence[str], sites: Sequence[Site]) -> torch.Tensor:
    """The unpatched value at ``sites[i]`` (a block output, or a head's output) at the last position of
    ``prompts[i]``: (N, D)."""
    if not prompts:
        return torch.empty(0)
    if all(site.head is None for site in sites):
        wanted = sorted({site.layer for site in sites})
        states = executor.states([[p] for p in prompts], wanted)  # (N, len(wanted), H)
        return torch.stack([states[i, wanted.index(site.layer)] for i, site in enumerate(sites)])
    wanted = [Site(site.layer, head=site.head) for site in sites]  # each prompt's own site, at its last token
    read = executor.read(list(prompts), list(dict.fromkeys(wanted)))  # one pass over all prompts
    return torch.stack([read[site][i] for i, site in enumerate(wanted)])
