"""Canny, ARControlApply and ARControl on the tiny models of both families (each ships a control adapter)."""
from __future__ import annotations

import pytest
import torch
from test_workflows import TINY_CONTROLAR, TINY_LLAMAGEN, TINY_VAR, tiny_models_dir

from arnodes.engine.errors import InvalidInputError, UnknownNameError
from arnodes.nodes.base import ExecutionContext
from arnodes.nodes.conditioning import ARClassCondition
from arnodes.nodes.control import ARControl, ARControlApply
from arnodes.nodes.generate import ARGenerate
from arnodes.nodes.inpaint import ARInpaint
from arnodes.nodes.loaders import ARModelLoader
from arnodes.nodes.masks import ARRegionMask
from arnodes.nodes.preprocess import Canny
from arnodes.nodes.tokenize import ARDecode

S = dict(seed=5, top_k=0, top_p=1.0, temperature=1.0)
FAMILIES = [TINY_VAR, TINY_CONTROLAR]


def _square(size: int = 64, x0: int = 8, y0: int = 30, side: int = 24) -> torch.Tensor:
    """A red square on white, off-centre: IMAGE [1, size, size, 3]."""
    img = torch.ones(1, size, size, 3)
    img[0, y0:y0 + side, x0:x0 + side] = torch.tensor([0.9, 0.1, 0.1])
    return img


@pytest.fixture(scope="module")
def models():
    mp = pytest.MonkeyPatch()
    mp.setenv("ARNODES_MODELS_DIR", str(tiny_models_dir()))
    out = {}
    for name in FAMILIES + [TINY_LLAMAGEN]:
        ctx = ExecutionContext("1", "X", tiny_models_dir(), tiny_models_dir())
        (model,) = ARModelLoader.execute(ctx, model=name, dtype="float32", quant="none", device="cpu")
        (cond,) = ARClassCondition.execute(ctx, model=model, classes="red heart", cfg=3.0, cfg_schedule="linear")
        out[name] = (ctx, model, cond)
    yield out
    mp.undo()


def test_canny_traces_the_outline_of_a_shape():
    (edges,) = Canny.execute(None, image=_square(), low_threshold=0.4, high_threshold=0.8)
    assert edges.shape == (1, 64, 64, 3) and set(edges.unique().tolist()) == {0.0, 1.0}
    e = edges[0, :, :, 0]
    assert e[30:54, 6:11].sum() >= 20 and e[30:54, 29:34].sum() >= 20  # left and right sides of the square
    assert e[:20].sum() == 0 and e[40:44, 14:28].sum() == 0  # nothing far away, nothing inside
    (fewer,) = Canny.execute(None, image=_square() * 0.2 + 0.8, low_threshold=0.4, high_threshold=0.8)
    (more,) = Canny.execute(None, image=_square() * 0.2 + 0.8, low_threshold=0.05, high_threshold=0.1)
    assert fewer.sum() < more.sum()  # faint outline: only the low thresholds keep it
    with pytest.raises(InvalidInputError, match="low_threshold 0.9 is above high_threshold 0.5"):
        Canny.execute(None, image=_square(), low_threshold=0.9, high_threshold=0.5)


@pytest.mark.parametrize("name", FAMILIES)
def test_control_follows_the_map_and_strength_zero_is_plain(models, name):
    ctx, model, cond = models[name]
    (edges,) = Canny.execute(None, image=_square(), low_threshold=0.4, high_threshold=0.8)
    run = dict(model=model, cond=cond, control_image=edges, control_type="canny", **S)
    (controlled,) = ARControl.execute(ctx, strength=1.0, **run)
    (off,) = ARControl.execute(ctx, strength=0.0, **run)
    (tokens,) = ARGenerate.execute(ctx, model=model, cond=cond, batch_size=1, more_smooth=False, **S).outputs
    (plain,) = ARDecode.execute(ctx, model=model, tokens=tokens, scales=0)
    assert controlled.shape == plain.shape == (1, 64, 64, 3)
    assert torch.equal(off, plain)  # strength 0: plain generation with the same seed, bit for bit
    assert (controlled - plain).abs().mean() > 0.02
    (other,) = Canny.execute(None, image=_square(x0=34, y0=6), low_threshold=0.4, high_threshold=0.8)
    (moved,) = ARControl.execute(ctx, strength=1.0, **{**run, "control_image": other})
    assert (moved - controlled).abs().mean() > 0.02  # another map, another image


@pytest.mark.parametrize("name", FAMILIES)
def test_apply_control_composes_with_inpaint(models, name):
    ctx, model, cond = models[name]
    (edges,) = Canny.execute(None, image=_square(), low_threshold=0.4, high_threshold=0.8)
    (ccond,) = ARControlApply.execute(ctx, cond=cond, control_image=edges, control_type="canny", strength=1.0)
    assert ccond.control is not None and cond.control is None  # the input condition is not changed
    image = _square()
    (mask,) = ARRegionMask.execute(None, image=image, left=0.5, top=0.0, right=1.0, bottom=1.0, invert=False)
    (a,) = ARInpaint.execute(ctx, model=model, cond=ccond, image=image, mask=mask, keep_unmasked=True, **S)
    (b,) = ARInpaint.execute(ctx, model=model, cond=cond, image=image, mask=mask, keep_unmasked=True, **S)
    keep = mask[0] == 0
    assert torch.equal(a[0][keep], image[0][keep]) and torch.equal(b[0][keep], image[0][keep])
    assert (a[0][~keep] - b[0][~keep]).abs().mean() > 0.01  # the control changed the generated half


def test_control_errors_name_the_problem(models):
    ctx, model, cond = models[TINY_VAR]
    edges = torch.zeros(1, 64, 64, 3)
    with pytest.raises(UnknownNameError, match="no control adapter 'depth'; it has: canny"):
        ARControl.execute(ctx, model=model, cond=cond, control_image=edges, control_type="depth", strength=1.0, **S)
    ctx2, plain_model, plain_cond = models[TINY_LLAMAGEN]
    with pytest.raises(UnknownNameError, match="has no control adapter 'canny'; it has: none"):
        ARControl.execute(ctx2, model=plain_model, cond=plain_cond, control_image=edges, control_type="canny",
                          strength=1.0, **S)
    with pytest.raises(InvalidInputError, match="input 'strength'"):
        ARControl.execute(ctx, model=model, cond=cond, control_image=edges, control_type="canny", strength=-0.1, **S)
    with pytest.raises(InvalidInputError, match="input 'control_image' must be a"):
        ARControlApply.execute(ctx, cond=cond, control_image=torch.zeros(64, 64), control_type="canny", strength=1.0)
    (two,) = ARClassCondition.execute(ctx, model=model, classes="red heart; cat face", cfg=3.0, cfg_schedule="linear")
    with pytest.raises(InvalidInputError, match="2 classes but input 'control_image' has 3 images"):
        ARControlApply.execute(ctx, cond=two, control_image=torch.zeros(3, 64, 64, 3), control_type="canny",
                               strength=1.0)


def test_a_multi_class_condition_is_reused_on_the_batch_it_generated(models):
    ctx, model, _ = models[TINY_VAR]
    (two,) = ARClassCondition.execute(ctx, model=model, classes="red heart; cat face", cfg=3.0, cfg_schedule="linear")
    (tokens,) = ARGenerate.execute(ctx, model=model, cond=two, batch_size=2, more_smooth=False, **S).outputs
    (images,) = ARDecode.execute(ctx, model=model, tokens=tokens, scales=0)
    assert images.shape[0] == 4  # heart, heart, cat, cat
    (mask,) = ARRegionMask.execute(None, image=images, left=0.0, top=0.0, right=0.5, bottom=1.0, invert=False)
    (out,) = ARInpaint.execute(ctx, model=model, cond=two, image=images, mask=mask, keep_unmasked=True, **S)
    assert out.shape == images.shape and two.batch == 2
    keep = mask[0] == 0
    assert all(torch.equal(out[i][keep], images[i][keep]) for i in range(4))
    with pytest.raises(InvalidInputError, match="2 classes but input 'image' has 3 images"):
        ARInpaint.execute(ctx, model=model, cond=two, image=images[:3], mask=mask[:3], keep_unmasked=True, **S)
