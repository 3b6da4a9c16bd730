"""The bundled canny adapter controls: the drawn subject follows an off-centre edge map.

Self-contained (no data set): the source drawing is the model's own uncontrolled sample, its
subject cut out and pasted off-centre; the map is the Canny map of that placement.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from arnodes.engine import tasks
from arnodes.engine.canny import canny
from arnodes.engine.conditioning import Conditioning
from arnodes.engine.control import ControlCondition
from arnodes.engine.loader import load_bundle
from arnodes.engine.registry import DEFAULT_MODEL, model_defaults
from arnodes.engine.sampling import SamplingParams
from arnodes.training.control_eval import foreground, iou, off_centre_placements, subject_box

CLASSES = ["red heart", "cat face", "pizza", "rocket"]


@pytest.fixture(scope="module")
def bundle():
    return load_bundle(DEFAULT_MODEL)


def test_bundle_ships_the_canny_adapter(bundle):
    adapter = bundle.control("canny")
    assert adapter.preprocessor.type == "canny"
    assert adapter.module.cfg.embed_dim == bundle.generator.cfg.embed_dim


def test_controlled_subject_follows_an_off_centre_map(bundle):
    d = model_defaults(DEFAULT_MODEL)
    params = SamplingParams(top_k=d.get("top_k", 0), top_p=d.get("top_p", 1.0))
    ids = tuple(bundle.classes.resolve(n) for n in CLASSES)
    run = tasks.RunSettings(params=params, seed=0)
    sources = tasks.generate_images(bundle, Conditioning(ids, cfg=d["cfg"]), run)
    rng = np.random.default_rng(0)
    placed = []
    for img in sources:
        drawing = img.add(1).mul(127.5).round().clamp(0, 255).byte().permute(1, 2, 0).numpy()
        placed += off_centre_placements(drawing, subject_box(drawing), 1, rng)
    src = torch.from_numpy(np.stack(placed)).permute(0, 3, 1, 2).float().div(127.5).sub(1)
    pre = bundle.control("canny").preprocessor
    maps = canny(src.add(1).div(2), pre.low_threshold, pre.high_threshold).mul(2).sub(1).expand(-1, 3, -1, -1)
    region = foreground(src)
    run = tasks.RunSettings(params=params, seed=1)
    controlled = tasks.generate_images(
        bundle, Conditioning(ids, cfg=d["cfg"], control=ControlCondition("canny", maps, 1.0)), run)
    free = tasks.generate_images(bundle, Conditioning(ids, cfg=d["cfg"]), run)
    ctl, unc = iou(foreground(controlled), region), iou(foreground(free), region)
    assert np.mean(ctl) > np.mean(unc) + 0.2, (ctl, unc)
    assert sum(c > u for c, u in zip(ctl, unc)) >= len(CLASSES) - 1
