"""Sampling helpers: the exact filtering rules of the reference samplers, and seeded reproducibility."""
from __future__ import annotations

import math

import pytest
import torch

from arnodes.engine.sampling import (SamplingParams, apply_temperature, filter_logits, gumbel_softmax, sample,
                                     sample_from_logits, top_k_mask, top_p_mask)


def test_top_k_keeps_ties():
    logits = torch.tensor([[1.0, 3.0, 2.0, 2.0, 0.5]])
    assert top_k_mask(logits, 2).tolist() == [[True, False, False, False, True]]  # both 2.0s kept
    assert top_k_mask(logits, 1).tolist() == [[True, False, True, True, True]]
    assert not top_k_mask(logits, 99).any()  # k larger than the vocabulary keeps everything


@pytest.mark.parametrize("style", ["var", "llamagen"])
@pytest.mark.parametrize("p", [1e-6, 0.05, 0.5, 0.95, 0.999])
def test_top_p_never_drops_the_top_token(style, p):
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(16, 50, generator=gen) * 3
    logits[0] = 0.0  # a flat row: every token is "the top"
    remove = top_p_mask(logits, p, style)
    is_top = logits == logits.amax(-1, keepdim=True)
    assert ((~remove) & is_top).any(-1).all(), "a largest logit must survive (one of them, on ties)"
    assert not remove[1:].gather(-1, logits[1:].argmax(-1, keepdim=True)).any()
    kept_mass = (logits.softmax(-1) * (~remove)).sum(-1)
    if style == "llamagen":  # keeps the smallest prefix reaching p
        assert (kept_mass >= p - 1e-5).all()


def test_top_p_nucleus_example():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logits = probs.log()
    assert top_p_mask(logits, 0.7, "var").tolist() == [[False, False, True, True]]  # tail mass 0.2 <= 0.3 removed
    assert top_p_mask(logits, 0.7, "llamagen").tolist() == [[False, False, True, True]]
    with pytest.raises(ValueError, match="top_p_style"):
        top_p_mask(logits, 0.7, "nope")  # type: ignore[arg-type]


def test_filter_with_temperature_then_top_k():
    logits = torch.tensor([[2.0, 4.0, 1.0, 3.0]])
    out = filter_logits(logits, SamplingParams(temperature=2.0, top_k=2))
    assert out[0, 1].item() == 2.0 and out[0, 3].item() == 1.5
    assert math.isinf(out[0, 0].item()) and math.isinf(out[0, 2].item())
    assert torch.equal(logits, torch.tensor([[2.0, 4.0, 1.0, 3.0]])), "input must not be modified"
    assert filter_logits(logits, SamplingParams()) is logits  # nothing to do
    assert torch.equal(apply_temperature(logits, 0.0), logits / 1e-5)


def test_sample_from_logits_reproducible_and_respects_mask():
    logits = torch.randn(3, 5, 40)
    params = SamplingParams(top_k=3)
    a = sample(logits, params, torch.Generator().manual_seed(9))
    b = sample(logits, params, torch.Generator().manual_seed(9))
    assert a.shape == (3, 5) and a.dtype == torch.int64 and torch.equal(a, b)
    allowed = ~top_k_mask(logits, 3)
    assert allowed.gather(-1, a[..., None]).all()
    draws = torch.stack([sample_from_logits(logits, torch.Generator().manual_seed(s)) for s in range(8)])
    assert (draws != draws[0]).any(), "different seeds should give different draws"
    greedy = sample(logits, SamplingParams(top_k=1), None)
    assert torch.equal(greedy, logits.argmax(-1))


def test_gumbel_softmax_reproducible_distribution():
    logits = torch.randn(2, 7)
    a = gumbel_softmax(logits, 0.5, torch.Generator().manual_seed(4))
    b = gumbel_softmax(logits, 0.5, torch.Generator().manual_seed(4))
    assert torch.equal(a, b)
    assert torch.allclose(a.sum(-1), torch.ones(2))


@pytest.mark.parametrize("kwargs, needle", [
    ({"temperature": -0.1}, "temperature"),
    ({"temperature": float("nan")}, "temperature"),
    ({"top_k": -1}, "top_k"),
    ({"top_p": 1.5}, "top_p"),
    ({"top_p": -0.01}, "top_p"),
])
def test_sampling_params_validation(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        SamplingParams(**kwargs)


def test_sampling_params_top_p_active():
    assert not SamplingParams(top_p=0.0).top_p_active
    assert not SamplingParams(top_p=1.0).top_p_active
    assert SamplingParams(top_p=0.95).top_p_active
