"""Large-model plumbing on the CPU: a model split by an accelerate device map (blocks offloaded to disk, weights
moved in at forward time) gives exactly the single-device results; --device checks; --batch-size auto backs
off on out-of-memory errors and ends with the numbers of a normal run."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from tiny_models import FAMILIES, make_tiny_model

import taskvec
from taskvec.cli import main
from taskvec.errors import TaskvecError
from taskvec.experiments import MainConfig, run_main
from taskvec.experiments.backoff import BatchBackoff, parse_batch_size
from taskvec.models.devices import check_device, execution_device
from taskvec.models.dispatch import dispatch_split, interleaved_map
from taskvec.runtime.fast import FastExecutor

pytestmark = pytest.mark.usefixtures("single_thread")

DEMOS = [("a", "B"), ("c", "D"), ("e", "F"), ("g", "H")]
QUERIES = list("pqrstuvw")


def split_copy(lm, tmp_path, offload="disk"):
    """A deep copy of ``lm`` spread by accelerate: embeddings, unembedding and every other block on ``offload``."""
    clone = replace_model(lm, copy.deepcopy(lm.model))
    return dispatch_split(clone, interleaved_map(clone, offload), offload_dir=tmp_path / "offload")


def replace_model(lm, model):
    from dataclasses import replace

    from taskvec.models.adapter import ArchitectureAdapter

    return replace(lm, model=model, adapter=ArchitectureAdapter.from_model(model, lm.tokenizer))


def everything(lm, executor=None):
    theta = taskvec.extract_task_vector(lm, DEMOS)
    sweep = taskvec.layer_sweep(lm, theta, QUERIES, answers=[q.upper() for q in QUERIES], executor=executor)
    patched = taskvec.apply_task_vector(lm, theta, QUERIES, layer=1)
    return theta.vectors, sweep.predictions, patched


@pytest.mark.parametrize("family", FAMILIES)
def test_split_model_gives_exactly_the_single_device_results(family, tmp_path):
    lm = make_tiny_model(family)
    split = split_copy(lm, tmp_path)
    device_map = split.model.hf_device_map
    assert "disk" in device_map.values() and "cpu" in device_map.values()
    offloaded = split.adapter.layers[1]
    assert any(p.device.type == "meta" for p in offloaded.parameters())  # weights really are off-device
    assert execution_device(split.model.get_input_embeddings()) == torch.device("cpu")
    executor = FastExecutor(split)
    vectors, sweep, patched = everything(split, executor)
    ref_vectors, ref_sweep, ref_patched = everything(lm)
    assert torch.equal(vectors, ref_vectors)
    assert sweep == ref_sweep and patched == ref_patched
    assert executor.shortcuts.skip_blocks  # the cached sweep's fast path also holds on the split model


def test_split_model_main_experiment_equals_single_device(tmp_path):
    lm = make_tiny_model("gemma3")
    config = MainConfig(model="tiny", tasks=("to_upper", "list_last"), n_dev=6, n_test=5, n_baseline=5, seed=3)
    single = run_main(config, tmp_path / "single", lm=lm)
    split = run_main(config, tmp_path / "split", lm=split_copy(lm, tmp_path, offload="cpu"))
    for name, entry in single["tasks"].items():
        assert {**split["tasks"][name], "seconds": 0} == {**entry, "seconds": 0}
    rows = [(tmp_path / d / "predictions.jsonl").read_text() for d in ("single", "split")]
    assert rows[0] == rows[1]


def test_load_model_device_auto_places_a_folder_model_with_a_device_map(tmp_path):
    lm = make_tiny_model("qwen2")
    lm.model.save_pretrained(tmp_path / "m")
    lm.tokenizer.save_pretrained(tmp_path / "m")
    auto = taskvec.load_model(str(tmp_path / "m"), device="auto")
    # No GPU here: everything on the CPU (transformers keeps no map when it has a single device).
    assert set(getattr(auto.model, "hf_device_map", {"": "cpu"}).values()) == {"cpu"}
    assert auto.input_device == torch.device("cpu")
    plain = taskvec.load_model(str(tmp_path / "m"))
    theta = taskvec.extract_task_vector(plain, DEMOS)
    assert torch.equal(taskvec.extract_task_vector(auto, DEMOS).vectors, theta.vectors)


def test_bad_devices_and_device_maps_are_refused(tmp_path):
    for bad, message in [("gpu", "unknown device 'gpu'"), ("cuda:x", "unknown device"), (3, "unknown device 3")]:
        with pytest.raises(TaskvecError, match=message):
            check_device(bad)
    if not torch.cuda.is_available():
        with pytest.raises(TaskvecError, match="no CUDA GPU is visible"):
            check_device("cuda:1")
    lm = make_tiny_model("llama")
    clone = replace_model(lm, copy.deepcopy(lm.model))
    with pytest.raises(TaskvecError, match="does not place parameter"):
        dispatch_split(clone, {"lm_head": "cpu"})
    with pytest.raises(TaskvecError, match="needs an offload directory"):
        dispatch_split(clone, interleaved_map(clone, "disk"))


@pytest.mark.parametrize("value", ["0", "-3", "big", 2.5, True, None])
def test_bad_batch_sizes_are_refused(value):
    with pytest.raises(TaskvecError, match="batch size must be a whole number of at least 1 or 'auto'"):
        parse_batch_size(value)


def test_cli_device_and_batch_size_errors_exit_2(capsys):
    assert main(["run", "--device", "tpu"]) == 2
    assert "unknown device 'tpu'" in capsys.readouterr().err
    assert main(["run", "--batch-size", "many"]) == 2
    assert "got 'many'" in capsys.readouterr().err


class OutOfMemoryAbove:
    """Test-only fault: every forward through the first block with more than ``limit`` rows raises
    ``torch.OutOfMemoryError``, as a GPU would."""

    def __init__(self, lm, limit: int) -> None:
        self.limit, self.failures, self.largest_ok = limit, 0, 0
        self.handle = lm.adapter.layers[0].register_forward_pre_hook(self.check, with_kwargs=True)

    def check(self, module, args, kwargs):
        rows = (args[0] if args else kwargs["hidden_states"]).shape[0]
        if rows > self.limit:
            self.failures += 1
            raise torch.OutOfMemoryError(f"test fault: {rows} rows > {self.limit}")
        self.largest_ok = max(self.largest_ok, rows)


def test_batch_size_auto_backs_off_and_matches_a_normal_run(tmp_path, caplog):
    lm = make_tiny_model("llama")
    config = MainConfig(model="tiny", tasks=("to_upper", "next_letter"), n_dev=6, n_test=5, n_baseline=9, seed=5)
    normal = run_main(config, tmp_path / "normal", lm=lm)
    fault = OutOfMemoryAbove(lm, limit=12)
    try:
        auto = run_main(MainConfig(**{**config.to_dict(), "batch_size": "auto"}), tmp_path / "auto", lm=lm)
    finally:
        fault.handle.remove()
    assert fault.failures >= 1 and fault.largest_ok <= 12
    assert "out of memory, retrying with batch size 16" in caplog.text
    for name, entry in normal["tasks"].items():
        assert {**auto["tasks"][name], "seconds": 0} == {**entry, "seconds": 0}
    assert json.loads((tmp_path / "auto" / "run-config.json").read_text())["batch_size"] == "auto"


def test_a_fixed_batch_size_reports_out_of_memory_clearly(tmp_path):
    lm = make_tiny_model("llama")
    fault = OutOfMemoryAbove(lm, limit=0)
    try:
        with pytest.raises(TaskvecError, match=r"to_upper: out of memory at batch size 32; use --batch-size auto"):
            run_main(MainConfig(model="tiny", tasks=("to_upper",), n_dev=4, n_test=3), tmp_path, lm=lm)
        backoff = BatchBackoff("auto")
        with pytest.raises(TaskvecError, match="out of memory even at batch size 1"):
            backoff.run(lambda size: taskvec.extract_task_vector(lm, DEMOS), "probe", lm)
    finally:
        fault.handle.remove()
