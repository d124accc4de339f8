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
from taskvec.core.sites import Add, Edit, Replace, Site
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
    first: Sequence[Edit],
    mode: str,
    alpha: float = 1.0,
) -> list[Edit] | None:
    """The edits applied at every generated token, given each prompt's first-forward edit (a Replace of block
    L's output by theta, or an Add of a function vector) under ``mode``; None for ``first``."""
    check_mode(mode)
    if mode == "first":
        return None
    if mode == "every_replace":
        return [Replace(Site(e.site.layer), e.value) if isinstance(e, Replace) else Add(Site(e.site.layer),
                alpha * e.value) for e in first]  # fmt: skip
    shifts = []
    replaced = [i for i, e in enumerate(first) if isinstance(e, Replace)]
    states = _unpatched(executor, [prompts[i] for i in replaced], [first[i].site.layer for i in replaced])
    for i, edit in enumerate(first):
        if isinstance(edit, Replace):
            shifts.append(Add(Site(edit.site.layer), alpha * (edit.value.float() - states[replaced.index(i)])))
        else:  # an added vector is its own shift
            shifts.append(Add(Site(edit.site.layer), alpha * edit.value))
    return shifts


def _unpatched(executor: Executor, prompts: Sequence[str], layers: Sequence[int]) -> torch.Tensor:
    """Block ``layers[i]``'s unpatched output at the last position of ``prompts[i]``: (N, H)."""
    if not prompts:
        return torch.empty(0)
    wanted = sorted(set(layers))
    states = executor.states([[p] for p in prompts], wanted)  # (N, len(wanted), H)
    return torch.stack([states[i, wanted.index(layer)] for i, layer in enumerate(layers)])
