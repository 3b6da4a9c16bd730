"""Constrained next-scale generation on a TokenCanvas (DESIGN.md section 3) with the fixture VAR model."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from arnodes.engine.classes import ClassNames
from arnodes.engine.conditioning import Conditioning
from arnodes.engine.errors import CancelledError, InvalidInputError
from arnodes.engine.generate import generate
from arnodes.engine.generate.canvas import TokenCanvas
from arnodes.engine.generate.next_scale import generate_scales, scale_known_masks
from arnodes.engine.loader import ModelBundle
from arnodes.engine.sampling import SamplingParams
from parity_var import load_case

CASE = Path(__file__).resolve().parents[1] / "fixtures" / "reference" / "var" / "tiny_a"
GREEDY = SamplingParams(top_k=1)


@pytest.fixture(scope="module")
def bundle() -> ModelBundle:
    cfg, tok, var, _ = load_case(CASE)
    names = ClassNames([f"class {i}" for i in range(var.num_classes)])
    return ModelBundle(name="tiny", family="var", tokenizer=tok, generator=var, classes=names,
                       image_size=cfg["image_size"], defaults={"top_k": 0, "top_p": 1.0})


@pytest.fixture(scope="module")
def encoded(bundle) -> list[torch.Tensor]:
    _, _, _, cases = load_case(CASE)
    return bundle.tokenizer.encode_scales(cases["vae_input_images"][:1])


def flat(grids: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([g.flatten(1) for g in grids], 1)


def test_all_known_canvas_returns_input_and_its_reconstruction(bundle, encoded):
    canvas = TokenCanvas.from_codes("var", bundle.tokenizer_id, encoded)
    out = generate(bundle, Conditioning((4,), cfg=1.5), canvas, params=SamplingParams(top_k=5), seed=3)
    assert torch.equal(flat(out.grids), flat(encoded))
    assert all(k.all() for k in out.known)
    img = bundle.tokenizer.decode_scales(out.grids)
    assert torch.equal(img, bundle.tokenizer.decode_scales(encoded))


def test_half_mask_keeps_known_half(bundle, encoded):
    known = [(torch.arange(g.shape[2]) < (g.shape[2] + 1) // 2).expand_as(g).clone() for g in encoded]
    canvas = TokenCanvas.from_codes("var", bundle.tokenizer_id, encoded).with_known(known)
    outs = {c: generate(bundle, Conditioning((c,), cfg=1.5), canvas, params=GREEDY) for c in (0, 9)}
    for out in outs.values():
        for g_out, g_in, k in zip(out.grids, encoded, known):
            assert torch.equal(g_out[k], g_in[k])
    unknown_a = torch.cat([g[~k] for g, k in zip(outs[0].grids, known)])
    unknown_b = torch.cat([g[~k] for g, k in zip(outs[9].grids, known)])
    original = torch.cat([g[~k] for g, k in zip(encoded, known)])
    assert unknown_a.numel() > 0
    assert not torch.equal(unknown_a, unknown_b), "another class should change the generated half"
    assert not torch.equal(unknown_b, original)


def test_scale_known_masks_follow_official_rule():
    keep = torch.zeros(1, 4, 4)
    keep[:, :, :2] = 1
    masks = scale_known_masks(keep, (1, 2, 3, 4))
    assert [m.shape for m in masks] == [(1, 1, 1), (1, 2, 2), (1, 3, 3), (1, 4, 4)]
    assert masks[0].all()  # scales of <= 3 tokens are always kept
    assert torch.equal(masks[3], keep.bool())
    assert masks[1][0, :, 0].all() and not masks[1][0, :, 1].any()


def test_seed_reproduces_and_seeds_differ(bundle):
    cond = Conditioning((2, 5), cfg=1.5)
    params = SamplingParams(top_k=50, top_p=0.95)
    a = flat(generate(bundle, cond, params=params, seed=123).grids)
    b = flat(generate(bundle, cond, params=params, seed=123).grids)
    c = flat(generate(bundle, cond, params=params, seed=124).grids)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_progress_and_cancel(bundle):
    S = len(bundle.generator.cfg.patch_nums)
    calls: list[tuple[int, int]] = []
    generate(bundle, Conditioning((1,)), params=GREEDY, progress=lambda i, n: calls.append((i, n)))
    assert calls == [(i, S) for i in range(1, S + 1)]

    seen: list[int] = []

    def cancel_after_two(i: int, n: int) -> None:
        seen.append(i)
        if i == 2:
            raise CancelledError("stop")

    with pytest.raises(CancelledError):
        generate(bundle, Conditioning((1,)), params=GREEDY, progress=cancel_after_two)
    assert seen == [1, 2]


def test_batch_mismatch_is_rejected(bundle, encoded):
    tok = bundle.tokenizer
    two = TokenCanvas.from_codes("var", bundle.tokenizer_id, [g.repeat(2, 1, 1) for g in encoded])
    with pytest.raises(InvalidInputError, match="batch"):
        generate_scales(bundle.generator, tok, Conditioning((1, 2, 3)), two, GREEDY, None)
    with pytest.raises(InvalidInputError):
        generate(bundle, Conditioning((1, 2, 3)), two, params=GREEDY)
    # a single image is expanded to every label
    one = TokenCanvas.from_codes("var", bundle.tokenizer_id, encoded)
    out = generate(bundle, Conditioning((1, 2, 3)), one, params=GREEDY)
    assert out.batch == 3 and all(torch.equal(g, e.expand_as(g)) for g, e in zip(out.grids, encoded))


def test_wrong_tokenizer_or_grid_shapes_rejected(bundle, encoded):
    other = TokenCanvas.from_codes("var", "someone-else:tokenizer", encoded)
    with pytest.raises(InvalidInputError, match="come from"):
        generate(bundle, Conditioning((1,)), other, params=GREEDY)
    short = TokenCanvas.from_codes("var", bundle.tokenizer_id, encoded[:-1])
    with pytest.raises(InvalidInputError, match="grids"):
        generate(bundle, Conditioning((1,)), short, params=GREEDY)


@pytest.mark.parametrize("cls", [-1, 11, 1000])
def test_class_id_out_of_range(bundle, cls):
    with pytest.raises(InvalidInputError, match="out of range"):
        generate(bundle, Conditioning((0, cls)), params=GREEDY)


def test_bad_seed_rejected(bundle):
    with pytest.raises(InvalidInputError, match="seed"):
        generate(bundle, Conditioning((0,)), params=GREEDY, seed=-5)
