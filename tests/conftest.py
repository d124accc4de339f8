"""Shared fixtures: tiny random models of every supported architecture family, built once per session."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))

import torch
from tiny_models import FAMILIES, make_tiny_model

#: (family, attention implementation) pairs; GPT-J has no SDPA attention in transformers.
ATTN_VARIANTS = [(f, "eager") for f in FAMILIES] + [(f, "sdpa") for f in FAMILIES if f != "gptj"]


@pytest.fixture(scope="session", params=FAMILIES, ids=FAMILIES)
def lm(request):
    """A tiny eager-attention model of each family."""
    return make_tiny_model(request.param)


@pytest.fixture(scope="session", params=ATTN_VARIANTS, ids=[f"{f}-{a}" for f, a in ATTN_VARIANTS])
def lm_any_attn(request):
    """A tiny model of each family with each attention implementation it supports."""
    family, attn = request.param
    return make_tiny_model(family, attn=attn)


@pytest.fixture(scope="module")
def single_thread():
    """Run a module's tiny models on one thread: spreading their small matrix products over cores costs
    far more than it saves (10x on a loaded 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
