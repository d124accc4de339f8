"""Prompt choices beyond the paper's, as the function-vector code makes them: its template, every pair scored on
the first token, and no text before BOS-less prompts. The template's strings are pinned here."""

from __future__ import annotations

import json

import pytest
from tiny_models import make_tiny_model

from taskvec import cli
from taskvec.engine.batching import encode
from taskvec.errors import TaskvecError
from taskvec.experiments import MainConfig, run_main
from taskvec.experiments.heads_run import HeadsConfig, run_heads
from taskvec.prompts import FV_TEMPLATE
from taskvec.tasks import builtin_task, prepare_task
from taskvec.tasks.definitions import Pair, Task
from taskvec.tasks.protocol import PromptProtocol, protocol_record

pytestmark = pytest.mark.usefixtures("single_thread")


def fv_code_prompt(demos, query, output_prefix="A:", input_prefix="Q:", input_sep="\n", output_sep="\n\n"):
    """The function-vector code's ``create_prompt`` with its defaults and ``prepend_space`` (a space before every
    input and output), written out here: the strings a user of that code feeds its model."""
    prompt = "".join(input_prefix + " " + x + input_sep + output_prefix + " " + y + output_sep for x, y in demos)
    return prompt + input_prefix + " " + query + input_sep + output_prefix


def test_fv_template_writes_the_function_vector_codes_prompts():
    demos = [("hot", "cold"), ("up", "down")]
    assert FV_TEMPLATE.icl_prompt(demos, "big") == "Q: hot\nA: cold\n\nQ: up\nA: down\n\nQ: big\nA:"
    assert FV_TEMPLATE.icl_prompt(demos, "big") == fv_code_prompt(demos, "big")
    assert FV_TEMPLATE.query_prompt("big") == "Q: big\nA:" == fv_code_prompt([], "big")
    assert FV_TEMPLATE.demonstration("big", "small") == "Q: big\nA: small"


def test_fixed_template_and_all_pairs_in_preparation():
    lm = make_tiny_model("llama")
    task = Task("mixed", "linguistic", "test", "exact", tuple(Pair(x, y) for x, y in
                [("a", "B"), ("c", "DE"), ("f", "G"), ("h", "IJK")]))  # fmt: skip
    paper = prepare_task(lm, task)
    assert paper.template != FV_TEMPLATE
    fv = prepare_task(lm, task, prompt=PromptProtocol(template="fv"))
    assert fv.template == FV_TEMPLATE and fv.task.scoring == "exact"
    every = prepare_task(lm, task, prompt=PromptProtocol(template="fv", pairs="all"))
    assert every.task.scoring == "prefix" and len(every.pairs) == 4 and len(fv.pairs) < 4
    assert sorted(every.answer_tokens) != [1, 1, 1, 1]  # multi-token answers kept, their first token scored
    with pytest.raises(TaskvecError, match="template 'qa'"):
        PromptProtocol(template="qa")


def test_bosless_prefix_none_puts_nothing_before_prompts_of_a_bosless_tokenizer():
    lm = make_tiny_model("qwen2")  # no BOS: a newline goes first by default
    assert lm.adapter.prefix_ids
    bare = PromptProtocol(bosless_prefix="none").applied(lm)
    assert bare.adapter.prefix_ids == [] and lm.adapter.prefix_ids  # a new handle; the loaded one is unchanged
    assert encode(bare, ["Q: a\nA:"])[0] == encode(lm, ["Q: a\nA:"])[0][len(lm.adapter.prefix_ids) :]
    with_bos = make_tiny_model("llama")
    assert PromptProtocol(bosless_prefix="none").applied(with_bos) is with_bos
    record = protocol_record(PromptProtocol("fv", "all", "none"))
    assert record["bosless_prefix"] == "" and record["template"] == "fv" and record["pairs"] == "all"
    assert PromptProtocol.from_record(record) == PromptProtocol("fv", "all", "none")
    assert protocol_record() == protocol_record(PromptProtocol())  # the paper's record has no new keys
    assert "template" not in protocol_record() and PromptProtocol.from_record(protocol_record()) == PromptProtocol()


def test_run_and_heads_use_the_fv_prompts(tmp_path):
    lm = make_tiny_model("qwen2")
    prompt = PromptProtocol("fv", "all", "none")
    config = MainConfig(model="tiny", tasks=("to_upper",), n_dev=3, n_test=3, n_baseline=3, batch_size=4,
                        methods=("task_vector", "function_vector"), fv={"n_corrupted": 3, "ks": [1]},
                        protocol=protocol_record(prompt))  # fmt: skip
    results = run_main(config, tmp_path / "run", lm=lm)
    assert results["config"]["protocol"]["template"] == "fv"
    rows = [json.loads(line) for line in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()]
    regular = next(r for r in rows if r["method"] == "regular")
    assert regular["prompt"].startswith("Q: ") and "\n\nQ: " in regular["prompt"] and regular["prompt"].endswith("\nA:")
    heads = run_heads(HeadsConfig(model="tiny", tasks=("to_upper",), n_prompts=3, prompt=prompt), tmp_path / "h",
                      lm=lm)  # fmt: skip
    assert json.loads((tmp_path / "h" / "run-config.json").read_text())["prompt"] == {
        "template": "fv", "pairs": "all", "bosless_prefix": "none"}
    assert heads["tasks"]["to_upper"]["n_corrupted"] == 3
    assert "prompt" not in HeadsConfig(model="tiny", tasks=("to_upper",)).to_dict()


def test_cli_options_reach_the_config(capsys):
    assert cli.main(["run", "--template", "qa"]) == 2
    assert "invalid choice" in capsys.readouterr().err
    import argparse

    from taskvec.commands import heads
    from taskvec.commands._common import prompt_protocol

    parser = argparse.ArgumentParser()
    heads.add_arguments(parser)
    args = parser.parse_args(["--template", "fv", "--all-pairs", "--bosless-prefix", "none"])
    assert prompt_protocol(args) == PromptProtocol("fv", "all", "none")
    assert builtin_task("to_upper").scoring == "exact"
