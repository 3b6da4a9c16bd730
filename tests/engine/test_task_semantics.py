"""Each task does what it says, on the tiny models of both families: tests that a do-nothing task
(return the input, ignore the option) fails."""
from __future__ import annotations

import pytest
import torch
from test_workflows import TINY_LLAMAGEN, TINY_VAR, tiny_models_dir

from arnodes.engine import tasks
from arnodes.engine.conditioning import Conditioning
from arnodes.engine.errors import InvalidInputError
from arnodes.engine.image import resize
from arnodes.engine.loader import load_bundle
from arnodes.engine.sampling import SamplingParams

RUN = tasks.RunSettings(params=SamplingParams(top_k=0, top_p=1.0), seed=11)
COND = Conditioning((2,), cfg=2.0)


@pytest.fixture(scope="module", params=[TINY_VAR, TINY_LLAMAGEN], ids=["var", "llamagen"])
def bundle(request):
    return load_bundle(str(tiny_models_dir() / request.param))


def _picture(size: int, shift: int = 0) -> torch.Tensor:
    y, x = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    img = torch.stack([x, y, (x * 3 + shift).sin() * y]).unsqueeze(0)
    img[:, :, size // 4:size // 2, size // 4:size // 2] = -0.8
    return img.clamp(-1, 1)


def test_variation_strength_0_is_the_reconstruction_and_1_ignores_the_source(bundle):
    size = tasks.model_size(bundle)
    src, other = _picture(size), _picture(size, shift=2).flip(-1)
    recon = tasks.decode(bundle, tasks.encode(bundle, src))
    assert torch.equal(tasks.variation(bundle, COND, src, 0.0, RUN), recon)
    fresh = tasks.variation(bundle, COND, src, 1.0, RUN)
    assert torch.equal(fresh, tasks.variation(bundle, COND, other, 1.0, RUN))  # nothing of the source is used
    assert (fresh - recon).abs().mean() > 0.02


def test_full_mask_edit_is_a_new_sample_of_the_class(bundle):
    size = tasks.model_size(bundle)
    src = _picture(size)
    everything = torch.ones(1, size, size)
    edited = tasks.inpaint(bundle, COND, src, everything, RUN)
    assert torch.equal(edited, tasks.generate_images(bundle, COND, RUN))  # not the old picture's colours


def test_edit_changes_inside_and_keeps_outside(bundle):
    size = tasks.model_size(bundle)
    src = _picture(size)
    region = torch.zeros(1, size, size)
    region[:, size // 4: 3 * size // 4, size // 4: 3 * size // 4] = 1
    out = tasks.inpaint(bundle, Conditioning((7,), cfg=2.0), src, region, RUN)
    keep = region[0] == 0
    assert torch.equal(out[0][:, keep], src[0][:, keep])
    assert (out[0][:, ~keep] - src[0][:, ~keep]).abs().mean() > 0.05


def test_outpaint_grows_the_canvas_and_keeps_the_original(bundle):
    size = tasks.model_size(bundle)
    src = _picture(size)
    steps: list[tuple[int, int]] = []
    run = tasks.RunSettings(params=RUN.params, seed=RUN.seed, progress=lambda i, n: steps.append((i, n)))
    out = tasks.outpaint(bundle, COND, src, 16, 0, 16, 0, 4, run)
    assert out.shape == (1, 3, size, size + 32)  # the requested size, not a squashed square stretched back
    band = 4 + 1
    assert torch.equal(out[..., 16 + band: 16 + size - band], src[..., band: size - band])  # original kept exactly
    new = torch.cat([out[..., :16], out[..., -16:]], -1)
    replicated = torch.cat([src[..., :1].expand(-1, -1, -1, 16), src[..., -1:].expand(-1, -1, -1, 16)], -1)
    assert (new - replicated).abs().mean() > 0.05  # the new area is drawn, not the padding
    totals = {n for _, n in steps}
    assert len(totals) == 1 and steps[-1][0] == steps[-1][1]  # one progress bar for both windows
    assert [i for i, _ in steps] == sorted(i for i, _ in steps)


def test_outpaint_of_a_small_image_scales_uniformly(bundle):
    size = tasks.model_size(bundle)
    src = _picture(size // 2)
    out = tasks.outpaint(bundle, COND, src, 8, 0, 8, 0, 2, RUN)
    assert out.shape == (1, 3, size // 2, size // 2 + 16)


@pytest.mark.parametrize("scale", [2, 4])
def test_super_resolve_matches_the_input_when_shrunk_and_adds_detail(bundle, scale):
    size = tasks.model_size(bundle)
    low = _picture(size // 2 if scale == 4 else size)  # x2: 2x2 overlapping tiles + more; x4 from half size
    steps: list[tuple[int, int]] = []
    run = tasks.RunSettings(params=RUN.params, seed=RUN.seed, progress=lambda i, n: steps.append((i, n)))
    out = tasks.super_resolve(bundle, COND, low, scale, run)
    H = low.shape[-1] * scale
    assert out.shape == (1, 3, H, H)
    assert (resize(out, low.shape[-2], low.shape[-1]) - low).abs().mean() < 0.03  # consistent with the input
    assert (out - resize(low, H, H)).abs().mean() > 0.005  # not just bicubic
    totals = {n for _, n in steps}
    assert len(totals) == 1 and steps[-1][0] == steps[-1][1]  # progress for the whole job, not per tile


def test_super_resolve_tiles_leave_no_seams(bundle):
    """Across a tile boundary the image changes no more than it does elsewhere (no visible grid)."""
    size = tasks.model_size(bundle)
    out = tasks.super_resolve(bundle, COND, _picture(size), 2, RUN)
    starts = tasks.window_starts(2 * size, size)
    tile_edges = {s for s in starts if s > 0} | {s + size for s in starts if s + size < 2 * size}
    finished_edges = {s + size // 4 for s in starts if s > 0}  # where each tile's own drawing starts
    edges = sorted(tile_edges | finished_edges)
    step = (out[..., :, 1:] - out[..., :, :-1]).abs().mean(dim=(0, 1, 2))  # per column boundary
    at_edges = step[[e - 1 for e in edges]].mean()
    assert at_edges < 2.0 * step.median()


def test_super_resolve_too_small_is_named(bundle):
    size = tasks.model_size(bundle)
    with pytest.raises(InvalidInputError, match=f"at least the model's {size}px"):
        tasks.super_resolve(bundle, COND, _picture(20), 2, RUN)


def test_window_starts_cover_with_overlap():
    assert tasks.window_starts(64, 64) == [0]
    assert tasks.window_starts(96, 64) == [0, 32]
    starts = tasks.window_starts(200, 64)
    assert starts[0] == 0 and starts[-1] == 200 - 64
    assert all(b - a <= 32 for a, b in zip(starts, starts[1:]))
