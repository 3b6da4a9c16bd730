"""WorkflowService.handle_json: what a server on another engine (docs/serving.md) puts behind HTTP."""
from __future__ import annotations

import base64
import io
import json
import threading
from pathlib import Path

import numpy as np
from PIL import Image

from arnodes.engine.batching import default_batcher
from arnodes.graph.service import WorkflowService

GENERATE = json.loads((Path(__file__).resolve().parents[2] / "workflows" / "generate.json").read_text())


def _pixels(answer: dict) -> np.ndarray:
    (image,) = answer["images"]
    png = Image.open(io.BytesIO(base64.b64decode(image["png_base64"])))
    assert "prompt" in png.info  # the PNG embeds the workflow that made it
    return np.asarray(png.convert("RGB"))


def test_a_workflow_request_returns_its_image_and_seeds_are_applied(tmp_path):
    service = WorkflowService(tmp_path)
    status, a = service.handle_json({"workflow": GENERATE, "set": ["3.seed=1"]})
    assert status == 200, a
    status, b = service.handle_json({"workflow": GENERATE, "set": ["3.seed=2"]})
    assert status == 200 and _pixels(a).shape == (64, 64, 3)
    assert not np.array_equal(_pixels(a), _pixels(b))  # the override reached the generator
    assert np.array_equal(_pixels(a), _pixels(service.handle_json({"workflow": GENERATE, "set": ["3.seed=1"]})[1]))


def test_bad_requests_are_400_with_the_problem_named(tmp_path):
    service = WorkflowService(tmp_path)
    for request, words in (([1, 2], '"workflow"'), ({"workflow": GENERATE, "set": "3.seed=1"}, '"set"'),
                           ({"workflow": {"1": {"class_type": "NoSuchNode", "inputs": {}}}}, "NoSuchNode"),
                           ({"workflow": GENERATE, "set": ["3.seed=-5"]}, "seed"),
                           ({"workflow": GENERATE, "set": ["2.classes=no such emoji"]}, "no such emoji")):
        status, answer = service.handle_json(request)
        assert status == 400 and words in answer["error"], (request, answer)
    assert not list(service.output_dir.iterdir())


def test_concurrent_requests_share_a_batch_and_keep_their_own_images(tmp_path):
    service = WorkflowService(tmp_path)
    seeds = [11, 12, 13, 14]
    alone = {s: _pixels(service.handle_json({"workflow": GENERATE, "set": [f"3.seed={s}"]})[1]) for s in seeds}
    service.clear_results()
    answers: dict[int, dict] = {}
    start = threading.Barrier(len(seeds))

    def request(seed: int) -> None:
        start.wait()
        answers[seed] = service.handle_json({"workflow": GENERATE, "set": [f"3.seed={seed}"]})[1]
    before = len(default_batcher().batches)
    threads = [threading.Thread(target=request, args=(s,)) for s in seeds]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert max(default_batcher().batches[before:]) > 1  # at least two of them generated together
    for s in seeds:
        assert np.array_equal(_pixels(answers[s]), alone[s]), s
