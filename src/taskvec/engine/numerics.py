"""Finiteness checks: NaN or infinite hidden states or logits stop the work with a clear error.

Half-precision models can overflow (float16 tops out at 65504), after which argmax picks an arbitrary
token and every accuracy is silent garbage. The checks are cheap next to a forward pass.
"""

from __future__ import annotations

import torch

from taskvec.errors import NumericalError


def check_finite(values: torch.Tensor, what: str, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``values`` unchanged when every entry is finite; otherwise a :class:`NumericalError` naming
    ``what``, how many entries are NaN or infinite, and the model's ``dtype``."""
    if values.numel() == 0:
        return values
    low, high = torch.aminmax(values)  # NaN propagates through both; one pass, ~20x cheaper than isfinite
    if bool(torch.isfinite(low)) and bool(torch.isfinite(high)):
        return values
    finite = torch.isfinite(values)
    n_nan = int(torch.isnan(values).sum())
    n_inf = int((~finite).sum()) - n_nan
    in_dtype = f" with the model in {str(dtype).removeprefix('torch.')}" if dtype is not None else ""
    hint = (
        "; float16/bfloat16 can overflow: rerun with --dtype float32 (dtype='float32')"
        if dtype in (torch.float16, torch.bfloat16)
        else "; the model's weights or the task vector may hold NaN/inf values"
    )
    raise NumericalError(f"{what} hold {n_nan} NaN and {n_inf} infinite values of {values.numel()}{in_dtype}{hint}")
