"""Edits on every forward of a model while a ``with`` block runs: what ``TaskVector.applied`` uses.

Any forward or ``generate`` call of the model inside the block sees the edits, on every row of whatever
batch it runs. Which columns are prompt tokens is read from the call itself: a forward with an empty (or no)
key/value cache runs a prompt (edits at prompt positions apply: the last column is the last prompt token),
a forward with a filled cache runs generated tokens (edits at generated positions apply) — the rule of
:mod:`taskvec.core.sites`. The hooks are removed on exit, also when the block raises.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from taskvec.core.sites import Edit
from taskvec.engine.hooks import registered
from taskvec.engine.interventions import Span, intervene
from taskvec.models.loading import LoadedModel


def _cached_tokens(kwargs: dict) -> int:
    cache = kwargs.get("past_key_values", kwargs.get("cache"))
    if cache is None:
        return 0
    try:
        return int(cache.get_seq_length())
    except (AttributeError, TypeError):  # a legacy tuple cache
        return int(cache[0][0].shape[-2]) if len(cache) else 0


@contextmanager
def steering(lm: LoadedModel, edits: Sequence[Edit]) -> Iterator[None]:
    """Inside the block, every forward of ``lm.model`` (or of its base model) applies ``edits`` to every row."""
    span = Span()

    def before(module, args, kwargs):
        span.prompt_end = None if _cached_tokens(kwargs) == 0 else 0

    handles = [lm.model.register_forward_pre_hook(before, with_kwargs=True)]
    if lm.adapter.base_model is not lm.model:
        handles.append(lm.adapter.base_model.register_forward_pre_hook(before, with_kwargs=True))
    with registered(handles), intervene(lm.adapter, every_row=[list(edits)], span=span):
        yield
