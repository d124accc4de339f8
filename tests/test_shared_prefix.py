"""Prompts that share demonstrations, run with one prefix forward per group, equal the plain path.

On tiny random models of every family (gemma3's sliding window of 4 is shorter than the prefixes):
states at every layer and greedy next tokens equal those of ``last_position_states`` and
``predict_token_ids`` on each full prompt, for groups of different sizes, suffix lengths and prefixes.
"""

from __future__ import annotations

import pytest
import torch
from tiny_models import make_tiny_model

from taskvec.api.extraction import mean_states
from taskvec.engine.accounting import accounting
from taskvec.engine.forward import predict_token_ids
from taskvec.engine.shared_prefix import common_prefix_length, run_prompt_groups
from taskvec.errors import TaskDataError, TaskvecError

pytestmark = pytest.mark.usefixtures("single_thread")

DEMOS = ["example:a->b\nexample:c->d\n", "example:hello->w\nexample:xy->z\nexample:1->2\n", "up->d\n", ""]
QUERIES = [["e", "gg", "long query"], ["x", "q"], ["k", "kk", "kkk", "k"], ["solo"]]
GROUPS = [[f"{demo}example:{q}->" for q in qs] for demo, qs in zip(DEMOS, QUERIES)]
PREDICT = [[i == len(g) - 1 for i in range(len(g))] for g in GROUPS]  # the last prompt of each group predicts


def plain_states(lm, layers):
    flat = [p for g in GROUPS for p in g]
    return mean_states(lm, [[p] for p in flat], layers, shared_prefix=False)


def test_common_prefix_length():
    assert common_prefix_length([[1, 2, 3], [1, 2, 4]]) == 2
    assert common_prefix_length([[1, 2, 3], [1, 2, 3]]) == 2  # each row keeps its last token
    assert common_prefix_length([[5, 6]]) == 1
    assert common_prefix_length([[1], [1, 2]]) == 0


def test_states_and_predictions_equal_the_plain_path(lm_any_attn):
    lm = lm_any_attn
    layers = list(range(lm.num_layers))
    out = run_prompt_groups(lm, GROUPS, layers=layers, predict=PREDICT, batch_size=2)
    torch.testing.assert_close(out.states, plain_states(lm, layers), atol=1e-4, rtol=1e-4)
    flat = [p for g in GROUPS for p in g]
    wanted = torch.tensor([f for fs in PREDICT for f in fs])
    plain_ids = predict_token_ids(lm, [p for p, w in zip(flat, wanted) if w])
    assert torch.equal(out.token_ids[wanted], plain_ids)
    assert (out.token_ids[~wanted] == -1).all()
    assert out.owner.tolist() == [g for g, group in enumerate(GROUPS) for _ in group]


@pytest.mark.parametrize("family", ["llama", "gemma3", "gptj"])
@pytest.mark.parametrize("batch_size", [1, 3, 32])
def test_capture_only_stops_early_and_matches(family, batch_size):
    lm = make_tiny_model(family)
    layers = [0, 1]  # below the top: prefix and suffix forwards stop after block 1
    out = run_prompt_groups(lm, GROUPS, layers=layers, batch_size=batch_size)
    torch.testing.assert_close(out.states, plain_states(lm, layers), atol=1e-4, rtol=1e-4)


def test_mean_states_shared_equals_plain(lm):
    shared = mean_states(lm, GROUPS, shared_prefix=True)
    plain = mean_states(lm, GROUPS, shared_prefix=False)
    torch.testing.assert_close(shared, plain, atol=1e-4, rtol=1e-4)


def test_fewer_tokens_are_processed():
    lm = make_tiny_model("llama")
    with accounting() as shared:
        mean_states(lm, GROUPS, shared_prefix=True)
    with accounting() as plain:
        mean_states(lm, GROUPS, shared_prefix=False)
    assert shared.total().tokens < plain.total().tokens
    assert plain.total().tokens == sum(len(p) + 1 for g in GROUPS for p in g)  # characters + <bos>


def test_too_few_pairs_is_an_error_not_a_hang():
    import random

    from taskvec.tasks.definitions import Pair
    from taskvec.tasks.sampling import draw_splits

    with pytest.raises(TaskDataError, match="cannot fill one set"):
        draw_splits((), 5, 3, 3, 3, 2, random.Random(0))
    with pytest.raises(TaskDataError, match="needs 8"):
        draw_splits(tuple(Pair(str(i), str(i)) for i in range(7)), 5, 3, 3, 3, 2, random.Random(0))


def test_bad_arguments():
    lm = make_tiny_model("llama")
    with pytest.raises(TaskvecError, match="one flag per prompt"):
        run_prompt_groups(lm, GROUPS, layers=[0], predict=[[True]])
    with pytest.raises(TaskvecError, match="nothing to compute"):
        run_prompt_groups(lm, GROUPS)
    with pytest.raises(TaskvecError, match="at least one prompt"):
        run_prompt_groups(lm, [[]], layers=[0])


@pytest.mark.parametrize("family", ["llama", "gemma3", "gpt2", "gptj"])
def test_protocol_fast_path_equals_straightforward_path(family):
    """The whole per-task protocol (dev theta, sweep, test theta + ICL, TV, baseline): identical rows."""
    from taskvec.experiments.main_experiment import MainConfig, evaluate_task
    from taskvec.runtime import make_executor
    from taskvec.tasks import builtin_task, prepare_task

    lm = make_tiny_model(family)
    config = MainConfig(model="tiny", n_dev=6, n_test=5, n_baseline=6, seed=3, batch_size=4)
    for name in ("to_upper", "next_letter"):
        prepared = prepare_task(lm, builtin_task(name))
        with accounting() as fast_work:
            fast, fast_rows = evaluate_task(lm, prepared, config, executor=make_executor(lm, "fast", 4))
        with accounting() as plain_work:
            plain, plain_rows = evaluate_task(lm, prepared, config, executor=make_executor(lm, "plain", 4))
        assert fast_rows == plain_rows
        assert {k: v for k, v in fast.items() if k != "seconds"} == {k: v for k, v in plain.items() if k != "seconds"}
        assert fast_work.total().block_tokens < plain_work.total().block_tokens
        assert set(fast_work.stages) == {"dev_theta", "dev_sweep", "test_theta_icl", "test_tv", "baseline"}
