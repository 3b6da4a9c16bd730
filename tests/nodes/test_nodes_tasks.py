"""The AR task nodes on the tiny fixture models of both families: shapes, ranges, kept pixels, errors."""
from __future__ import annotations

import pytest
import torch
from test_workflows import TINY_LLAMAGEN, TINY_VAR, tiny_models_dir

from arnodes.engine.errors import InvalidInputError
from arnodes.engine.generate.canvas import TokenCanvas
from arnodes.nodes.base import ExecutionContext
from arnodes.nodes.conditioning import ARClassCondition
from arnodes.nodes.edit import AREdit, ARVariation
from arnodes.nodes.generate import ARGenerate
from arnodes.nodes.inpaint import ARInpaint, AROutpaint
from arnodes.nodes.loaders import ARModelLoader
from arnodes.nodes.masks import ARRegionMask
from arnodes.nodes.super_resolve import ARSuperResolve
from arnodes.nodes.tokenize import ARDecode, ARTokenize

S = dict(seed=5, top_k=0, top_p=1.0, temperature=1.0)
FAMILIES = [TINY_VAR, TINY_LLAMAGEN]


@pytest.fixture(scope="module")
def setup():
    """Per family: ctx, model handle, a one-class cond, and a generated 64px source image."""
    mp = pytest.MonkeyPatch()
    mp.setenv("ARNODES_MODELS_DIR", str(tiny_models_dir()))
    out = {}
    for name in FAMILIES:
        ctx = ExecutionContext("1", "X", tiny_models_dir(), tiny_models_dir())
        (model,) = ARModelLoader.execute(ctx, model=name, dtype="float32", quant="none", device="cpu")
        (cond,) = ARClassCondition.execute(ctx, model=model, classes="red heart", cfg=3.0, cfg_schedule="linear")
        (tokens,) = ARGenerate.execute(ctx, model=model, cond=cond, batch_size=1, more_smooth=False, **S).outputs
        (image,) = ARDecode.execute(ctx, model=model, tokens=tokens, scales=0)
        out[name] = (ctx, model, cond, tokens, image)
    yield out
    mp.undo()


def center_mask(image):
    return ARRegionMask.execute(None, image=image, left=0.25, top=0.25, right=0.75, bottom=0.75, invert=False)[0]


@pytest.mark.parametrize("name", FAMILIES)
def test_generate_decode_tokenize(setup, name):
    ctx, model, cond, tokens, image = setup[name]
    assert isinstance(tokens, TokenCanvas) and all(k.all() for k in tokens.known)
    assert image.shape == (1, 64, 64, 3) and 0 <= image.min() and image.max() <= 1 and image.std() > 0.02
    (again,) = ARTokenize.execute(ctx, model=model, image=image)
    assert again.shapes == tokens.shapes and again.family == tokens.family
    (big,) = ARTokenize.execute(ctx, model=model, image=torch.rand(1, 100, 80, 3))  # resized to the model size
    assert big.shapes == tokens.shapes
    if len(tokens.grids) > 1:  # next-scale: decode from the first k scales
        (coarse,) = ARDecode.execute(ctx, model=model, tokens=tokens, scales=1)
        assert coarse.shape == image.shape and not torch.equal(coarse, image)
    with pytest.raises(InvalidInputError, match="input 'scales'"):
        ARDecode.execute(ctx, model=model, tokens=tokens, scales=len(tokens.grids) + 1)


@pytest.mark.parametrize("name", FAMILIES)
def test_generate_batch_and_constrained_canvas(setup, name):
    ctx, model, cond, tokens, image = setup[name]
    (two,) = ARClassCondition.execute(ctx, model=model, classes="sun; pizza", cfg=3.0, cfg_schedule="linear")
    result = ARGenerate.execute(ctx, model=model, cond=two, batch_size=2, more_smooth=False, **S)
    (out,) = result.outputs
    assert result.ui["stats"][0]["forwards"] > 0 and result.ui["stats"][0]["decode"] == "plain"
    assert out.batch == 4 and all(k.all() for k in out.known)
    known = [torch.zeros_like(k) for k in tokens.known]
    known[0][:] = True  # keep the first grid (VAR: the 1x1 scale; LlamaGen: every token)
    (kept,) = ARGenerate.execute(ctx, model=model, cond=cond, batch_size=1, more_smooth=False,
                                 tokens=tokens.with_known(known), **(S | {"seed": 99})).outputs
    assert torch.equal(kept.grids[0], tokens.grids[0])


@pytest.mark.parametrize("name", FAMILIES)
def test_inpaint_keeps_unmasked_pixels_exactly(setup, name):
    ctx, model, cond, _, image = setup[name]
    mask = center_mask(image)
    (out,) = ARInpaint.execute(ctx, model=model, cond=cond, image=image, mask=mask, keep_unmasked=True, **S)
    keep = mask[0] == 0
    assert out.shape == image.shape and torch.equal(out[0][keep], image[0][keep])
    assert not torch.equal(out[0][~keep], image[0][~keep])
    small = image[:, ::2, ::2]  # another size than the model's: output keeps the input's size
    (out,) = ARInpaint.execute(ctx, model=model, cond=cond, image=small, mask=center_mask(small),
                               keep_unmasked=True, **S)
    assert out.shape == small.shape and torch.equal(out[0][:8], small[0][:8])
    # a mask of another size is resized to the image (as ComfyUI does): same result as the full-size mask
    (resized,) = ARInpaint.execute(ctx, model=model, cond=cond, image=image, mask=mask[:, ::2, ::2],
                                   keep_unmasked=True, **S)
    assert resized.shape == image.shape
    assert torch.equal(resized[0, :14], image[0, :14]) and torch.equal(resized[0, 50:], image[0, 50:])
    assert not torch.equal(resized[0, 20:44, 20:44], image[0, 20:44, 20:44])
    with pytest.raises(InvalidInputError, match="input 'mask' has 2 masks for 1 images"):
        ARInpaint.execute(ctx, model=model, cond=cond, image=image, mask=mask.repeat(2, 1, 1), keep_unmasked=True, **S)


@pytest.mark.parametrize("name", FAMILIES)
def test_outpaint_covers_a_bigger_area(setup, name):
    ctx, model, cond, _, image = setup[name]
    (out,) = AROutpaint.execute(ctx, model=model, cond=cond, image=image, left=16, top=0, right=0, bottom=8,
                                feathering=4, **S)
    assert out.shape == (1, 72, 80, 3) and 0 <= out.min() and out.max() <= 1
    assert torch.equal(out[0, 8:56, 24:72], image[0, 8:56, 8:56])  # the original beyond the feather band
    assert out[0, :, :16].std() > 0.01  # the new strip is not a flat fill
    with pytest.raises(InvalidInputError, match="all 0"):
        AROutpaint.execute(ctx, model=model, cond=cond, image=image, left=0, top=0, right=0, bottom=0,
                           feathering=4, **S)


@pytest.mark.parametrize("name", FAMILIES)
def test_edit_changes_only_the_region(setup, name):
    ctx, model, _, _, image = setup[name]
    (cat,) = ARClassCondition.execute(ctx, model=model, classes="cat face", cfg=3.0, cfg_schedule="linear")
    mask = center_mask(image)
    (out,) = AREdit.execute(ctx, model=model, image=image, mask=mask, cond=cat, **S)
    keep = mask[0] == 0
    assert out.shape == image.shape and torch.equal(out[0][keep], image[0][keep])


@pytest.mark.parametrize("name", FAMILIES)
def test_super_resolve_and_variation(setup, name):
    ctx, model, cond, _, image = setup[name]
    (up,) = ARSuperResolve.execute(ctx, model=model, cond=cond, image=image[:, ::2, ::2], scale=2, **S)
    assert up.shape == (1, 64, 64, 3) and up.std() > 0.02
    with pytest.raises(InvalidInputError, match="at least the model's 64px"):
        ARSuperResolve.execute(ctx, model=model, cond=cond, image=image[:, :20, :20], scale=2, **S)
    (var,) = ARVariation.execute(ctx, model=model, cond=cond, image=image, strength=0.0, **S)
    assert var.shape == (1, 64, 64, 3)
    with pytest.raises(InvalidInputError, match="input 'strength'.*1.5"):
        ARVariation.execute(ctx, model=model, cond=cond, image=image, strength=1.5, **S)


def test_bad_inputs_are_named(setup):
    ctx, model, cond, tokens, image = setup[TINY_VAR]
    with pytest.raises(InvalidInputError, match="input 'image' must be a \\[B, H, W, 3\\]"):
        ARTokenize.execute(ctx, model=model, image=image[..., :2])
    with pytest.raises(InvalidInputError, match="input 'image' contains NaN"):
        ARVariation.execute(ctx, model=model, cond=cond, image=image * float("nan"), strength=0.5, **S)
    with pytest.raises(InvalidInputError, match="input 'cond'"):
        ARVariation.execute(ctx, model=model, cond="red heart", image=image, strength=0.5, **S)
    with pytest.raises(InvalidInputError, match="input 'seed'"):
        ARGenerate.execute(ctx, model=model, cond=cond, batch_size=1, more_smooth=False, **(S | {"seed": -1}))
    with pytest.raises(InvalidInputError, match="input 'tokens'"):
        ARDecode.execute(ctx, model=model, tokens=image, scales=0)
    _, lg_model, _, lg_tokens, _ = setup[TINY_LLAMAGEN]
    with pytest.raises(InvalidInputError, match="tokens come from"):
        ARDecode.execute(ctx, model=model, tokens=lg_tokens, scales=0)


def test_generate_node_decode_strategies(setup):
    """Raster models take every strategy (same image size, forwards reported); next-scale ones refuse sjd."""
    ctx, model, cond, tokens, image = setup[TINY_LLAMAGEN]
    for strategy in ("plain", "sjd", "gsd"):
        result = ARGenerate.execute(ctx, model=model, cond=cond, batch_size=1, more_smooth=False, decode=strategy, **S)
        (out,) = result.outputs
        stats = result.ui["stats"][0]
        assert out.shapes == tokens.shapes and stats["decode"] == strategy and 1 <= stats["forwards"] <= 16
    result = ARGenerate.execute(ctx, model=model, cond=cond, batch_size=1, more_smooth=False, decode="gsd",
                                draft_window=1, draft_init="uniform", group_mass=0.2, **S)
    stats = result.ui["stats"][0]
    assert stats["forwards"] == 16 and stats["drafts"] == "uniform"  # one draft per forward: as plain
    with pytest.raises(InvalidInputError, match="group_mass"):
        ARGenerate.execute(ctx, model=model, cond=cond, batch_size=1, more_smooth=False, decode="gsd",
                           group_mass=1.0, **S)
    ctx, model, cond, *_ = setup[TINY_VAR]
    with pytest.raises(InvalidInputError, match="next-scale"):
        ARGenerate.execute(ctx, model=model, cond=cond, batch_size=1, more_smooth=False, decode="sjd", **S)


def test_inpaint_and_outpaint_take_the_decode_strategy(setup):
    """sjd on the raster model: the unmasked pixels stay exactly the input's; next-scale models refuse it."""
    ctx, model, cond, tokens, image = setup[TINY_LLAMAGEN]
    mask = center_mask(image)
    (out,) = ARInpaint.execute(ctx, model=model, cond=cond, image=image, mask=mask, keep_unmasked=True,
                               decode="sjd", **S)
    keep = mask[0] == 0
    assert out.shape == image.shape and torch.equal(out[0][keep], image[0][keep])
    (wide,) = AROutpaint.execute(ctx, model=model, cond=cond, image=image, left=16, top=0, right=0, bottom=0,
                                 feathering=4, decode="gsd", draft_window=2, draft_init="above", group_mass=0.3, **S)
    assert wide.shape == (1, 64, 80, 3)
    ctx, model, cond, tokens, image = setup[TINY_VAR]
    with pytest.raises(InvalidInputError, match="next-scale"):
        ARInpaint.execute(ctx, model=model, cond=cond, image=image, mask=mask, keep_unmasked=True, decode="sjd", **S)
