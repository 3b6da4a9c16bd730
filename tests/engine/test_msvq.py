"""VAR multi-scale residual VQ tokenizer: shapes, partial decoding, input validation, phi layouts."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from arnodes.engine.errors import InvalidInputError
from arnodes.engine.tokenizers.msvq import MSVQConfig, MSVQTokenizer, phi_index
from parity_var import load_case

CASE = Path(__file__).resolve().parents[1] / "fixtures" / "reference" / "var" / "tiny_a"
TINY = MSVQConfig(vocab_size=32, z_channels=4, ch=32, ch_mult=(1, 1), num_res_blocks=1, patch_nums=(1, 2, 3),
                  share_quant_resi=4, using_sa=False, using_mid_sa=False)


@pytest.fixture(scope="module")
def fixture_tok():
    cfg, tok, _, cases = load_case(CASE)
    return cfg, tok, cases


def test_encode_decode_shapes(fixture_tok):
    cfg, tok, cases = fixture_tok
    x = cases["vae_input_images"]
    codes = tok.encode_scales(x)
    assert [tuple(c.shape) for c in codes] == [(x.shape[0], pn, pn) for pn in cfg["patch_nums"]]
    assert all(c.dtype == torch.int64 and int(c.min()) >= 0 and int(c.max()) < tok.cfg.vocab_size for c in codes)
    img = tok.decode_scales(codes)
    assert img.shape == x.shape and float(img.min()) >= -1 and float(img.max()) <= 1
    assert tok.grid_shapes_for() == [(pn, pn) for pn in cfg["patch_nums"]]
    assert tok.image_size == cfg["image_size"]


def test_partial_decode_differs_and_fhat_approaches_features(fixture_tok):
    """Each added scale explains more of the encoder features. The fixture codebook is N(0, 0.5^2), far
    wider than the random encoder's features, so rescale it to their size first (a trained codebook is);
    the decoder is random too, so closeness to the input is measured on the latent the decoder sees."""
    _, tok0, cases = fixture_tok
    tok = copy.deepcopy(tok0)
    x = cases["vae_input_images"]
    with torch.no_grad():
        f = tok.quant_conv(tok.encoder(x))
        gen = torch.Generator().manual_seed(0)
        w = tok.quantize.embedding.weight
        w.copy_(torch.randn(w.shape, generator=gen) * f.std())
    codes = tok.encode_scales(x)
    S = len(codes)
    errs = [(tok.scales_to_fhat(codes, k) - f).square().mean().item() for k in range(1, S + 1)]
    assert all(b < a for a, b in zip(errs, errs[1:])), errs
    full = tok.decode_scales(codes)
    assert torch.equal(tok.decode_scales(codes, S), full)
    for k in range(1, S):
        assert (tok.decode_scales(codes, k) - full).abs().max() > 1e-3, f"upto={k} equals the full decode"


@pytest.mark.parametrize("bad, needle", [
    (torch.zeros(1, 3, 32, 32), "64x64"),
    (torch.zeros(1, 3, 64, 48), "64x64"),
    (torch.zeros(1, 4, 64, 64), "[B, 3, H, W]"),
    (torch.zeros(3, 64, 64), "[B, 3, H, W]"),
])
def test_encoder_rejects_bad_shapes(fixture_tok, bad, needle):
    _, tok, _ = fixture_tok
    with pytest.raises(InvalidInputError) as e:
        tok.encode_scales(bad)
    assert needle in str(e.value)


def test_encoder_rejects_nan(fixture_tok):
    _, tok, _ = fixture_tok
    x = torch.zeros(1, 3, 64, 64)
    x[0, 1, 5, 7] = float("nan")
    with pytest.raises(InvalidInputError, match="NaN"):
        tok.encode_scales(x)
    with pytest.raises(InvalidInputError, match="NaN"):
        tok.encode_scales(torch.full((1, 3, 64, 64), float("inf")))


def test_decode_rejects_bad_codes(fixture_tok):
    _, tok, cases = fixture_tok
    codes = tok.encode_scales(cases["vae_input_images"][:1])
    with pytest.raises(InvalidInputError, match="outside"):
        tok.decode_scales([codes[0]] + [c.clone().fill_(tok.cfg.vocab_size) for c in codes[1:]])
    with pytest.raises(InvalidInputError, match="scale 1"):
        tok.decode_scales([codes[0], codes[2]] + codes[2:])
    with pytest.raises(InvalidInputError):
        tok.decode_scales(codes, upto=len(codes) + 1)


def test_scales_to_var_input_shape(fixture_tok):
    cfg, tok, cases = fixture_tok
    codes = tok.encode_scales(cases["vae_input_images"])
    vi = tok.scales_to_var_input(codes)
    L, first_l = sum(p * p for p in cfg["patch_nums"]), cfg["patch_nums"][0] ** 2
    assert vi.shape == (len(codes[0]), L - first_l, tok.cfg.z_channels)


def test_phi_index_rule():
    assert [phi_index(si, 10, 4) for si in range(10)] == [0, 0, 1, 1, 1, 2, 2, 3, 3, 3]
    assert [phi_index(si, 4, 4) for si in range(4)] == [0, 1, 2, 3]
    assert [phi_index(si, 6, 2) for si in range(6)] == [0, 0, 0, 1, 1, 1]


@pytest.mark.parametrize("share, expected", [
    (0, {f"quantize.quant_resi.{i}.{p}" for i in range(3) for p in ("weight", "bias")}),
    (1, {"quantize.quant_resi.qresi.weight", "quantize.quant_resi.qresi.bias"}),
    (2, {f"quantize.quant_resi.qresi_ls.{i}.{p}" for i in range(2) for p in ("weight", "bias")}),
])
def test_share_quant_resi_key_layouts(share, expected):
    import dataclasses
    tok = MSVQTokenizer(dataclasses.replace(TINY, share_quant_resi=share))
    keys = {k for k in tok.state_dict() if k.startswith("quantize.quant_resi.")}
    assert keys == expected
    for k in expected:
        if k.endswith("weight"):
            assert tuple(tok.state_dict()[k].shape) == (4, 4, 3, 3)
    x = torch.rand(2, 3, TINY.image_size, TINY.image_size) * 2 - 1
    codes = tok.encode_scales(x)
    assert tok.decode_scales(codes, upto=1).shape == x.shape
