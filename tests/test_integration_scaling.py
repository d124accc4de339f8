"""Integration test on the real default model: gemma-3-270m split by an accelerate device map, with half its
blocks, its embeddings and its unembedding offloaded to disk (weights read in at forward time), gives
exactly the single-device task vector, layer sweep and patched answers."""

from __future__ import annotations

import pytest
import torch

import taskvec
from taskvec.models.dispatch import dispatch_split, interleaved_map
from taskvec.prompts import PromptTemplate

pytestmark = pytest.mark.integration

DEMOS = [(c, c.upper()) for c in "xylkw"]
QUERIES = list("abcdefgh")


def everything(lm):
    theta = taskvec.extract_task_vector(lm, DEMOS, dummy_queries=["f", "m"], template=PromptTemplate(answer_prefix=" "))
    sweep = taskvec.layer_sweep(lm, theta, QUERIES, answers=[q.upper() for q in QUERIES])
    return theta.vectors, sweep.predictions, taskvec.apply_task_vector(lm, theta, QUERIES, layer=sweep.best_layer)


def test_disk_offloaded_split_gemma_equals_the_single_device_model(tmp_path):
    single = everything(taskvec.load_model("gemma-3-270m"))
    lm = taskvec.load_model("gemma-3-270m")
    device_map = interleaved_map(lm, "disk")
    split_lm = dispatch_split(lm, device_map, offload_dir=tmp_path)
    assert sum(d == "disk" for d in device_map.values()) == 11  # 9 of 18 blocks, embeddings, unembedding
    split = everything(split_lm)
    assert torch.equal(split[0], single[0])
    assert split[1] == single[1] and split[2] == single[2]
    assert sum(p == q.upper() for p, q in zip(split[2], QUERIES)) >= 4  # the task vector works at all
