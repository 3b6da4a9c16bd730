"""The executor under two threads on the bundled model: results never cross, and a cancelled run
releases its model pin so the next run proceeds."""
from __future__ import annotations

import copy
import json
import threading
from pathlib import Path

import pytest
import torch

from arnodes.engine.errors import CancelledError
from arnodes.engine.model_cache import default_cache
from arnodes.graph import Executor, LRUCache
from arnodes.graph.registry import default_registry

REPO = Path(__file__).resolve().parent.parent
BASE = json.loads((REPO / "workflows" / "generate.json").read_text())
pytestmark = pytest.mark.skipif(not (REPO / "weights" / "emoji.json").is_file(), reason="bundled model missing")


def workflow(seed: int, cls: str) -> dict:
    wf = copy.deepcopy(BASE)
    wf["2"]["inputs"]["classes"] = cls
    wf["3"]["inputs"].update(seed=seed, top_k=0, top_p=1.0, temperature=1.2)
    return wf


REQUESTS = [(s, c) for s, c in zip(range(8), ["red heart", "sun", "fire", "pizza"] * 2)]


def test_two_threads_share_an_executor_without_mixing_results(tmp_path):
    executor = Executor(default_registry(), LRUCache(64))
    got: dict[tuple, torch.Tensor] = {}
    failures: list[str] = []

    def worker(part: list[tuple]) -> None:
        for seed, cls in part:
            try:
                result = executor.run(workflow(seed, cls), input_dir=tmp_path, output_dir=tmp_path / "out")
                got[seed, cls] = result.outputs["4"][0]
            except Exception as e:  # noqa: BLE001 - reported below
                failures.append(f"{seed} {cls}: {type(e).__name__}: {e}")

    threads = [threading.Thread(target=worker, args=(REQUESTS[k::2],)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not failures, failures
    alone = Executor(default_registry(), LRUCache(64))
    for seed, cls in REQUESTS:
        expected = alone.run(workflow(seed, cls), input_dir=tmp_path, output_dir=tmp_path / "alone").outputs["4"][0]
        assert torch.equal(got[seed, cls], expected), (seed, cls)
    assert len(list((tmp_path / "out").iterdir())) == len(REQUESTS)


def test_cancel_mid_run_frees_the_model_for_the_next_run(tmp_path):
    executor = Executor(default_registry(), LRUCache(8))
    cancel = threading.Event()

    def on_event(event) -> None:
        if event.kind == "progress" and event.class_type == "ARGenerate":
            cancel.set()  # mid-generation: the next progress check raises

    with pytest.raises(CancelledError):
        executor.run(workflow(5, "sun"), input_dir=tmp_path, output_dir=tmp_path / "out", on_event=on_event,
                     cancel=cancel)
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir()), "a cancelled run saved"
    assert all(not e["pinned"] for e in default_cache().info()), "the cancelled run still pins its model"
    result = executor.run(workflow(5, "sun"), input_dir=tmp_path, output_dir=tmp_path / "out")
    assert result.ui and len(list((tmp_path / "out").iterdir())) == 1


def test_generate_nodes_of_one_workflow_run_as_one_batch(tmp_path):
    """Two ARGenerate nodes ready at the same time run side by side and meet in the batcher; each
    image is the one its node makes in a workflow of its own."""
    from arnodes.engine.batching import default_batcher

    wf = workflow(5, "sun")
    wf["6"] = {"class_type": "ARGenerate", "inputs": {**wf["3"]["inputs"], "seed": 6}}
    wf["7"] = {"class_type": "ARDecode", "inputs": {"model": ["1", 0], "tokens": ["6", 0], "scales": 0}}
    wf["8"] = {"class_type": "SaveImage", "inputs": {"images": ["7", 0], "filename_prefix": "second"}}
    before = len(default_batcher().batches)
    result = Executor(default_registry(), LRUCache(64)).run(wf, input_dir=tmp_path, output_dir=tmp_path / "out")
    assert default_batcher().batches[before:] == [2]
    assert result.executed.index("3") < result.executed.index("6")  # recorded in workflow order
    for node, seed in (("4", 5), ("7", 6)):
        alone = Executor(default_registry(), LRUCache(64)).run(workflow(seed, "sun"), input_dir=tmp_path,
                                                               output_dir=tmp_path / f"alone{seed}")
        assert torch.equal(result.outputs[node][0], alone.outputs["4"][0]), seed
