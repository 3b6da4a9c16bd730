"""Classifier-free guidance arithmetic and schedules, as the reference implementations compute them."""
from __future__ import annotations

import pytest
import torch

from arnodes.engine.guidance import (VAR_SCHEDULES, cfg_combine, cfg_mix_var, llamagen_guided_step, var_constant,
                                     var_linear_ramp)


def test_cfg_mix_var_t0_is_cond_exactly():
    cond, uncond = torch.randn(2, 5, 11), torch.randn(2, 5, 11) * 100
    assert torch.equal(cfg_mix_var(cond, uncond, 0.0), cond)


def test_cfg_mix_var_formula():
    cond, uncond = torch.tensor([2.0, -1.0]), torch.tensor([1.0, 3.0])
    assert torch.equal(cfg_mix_var(cond, uncond, 1.5), 2.5 * cond - 1.5 * uncond)


def test_cfg_combine_llamagen_form():
    cond, uncond = torch.tensor([2.0, -1.0]), torch.tensor([1.0, 3.0])
    assert torch.equal(cfg_combine(cond, uncond, 1.0), cond)
    assert torch.equal(cfg_combine(cond, uncond, 4.0), uncond + (cond - uncond) * 4.0)


def test_var_linear_ramp_values():
    assert [var_linear_ramp(1.5, si, 4) for si in range(4)] == pytest.approx([0.0, 0.5, 1.0, 1.5])
    assert [var_linear_ramp(4.0, si, 10) for si in (0, 9)] == [0.0, 4.0]
    assert var_linear_ramp(4.0, 3, 10) == pytest.approx(4.0 / 3)
    assert var_linear_ramp(2.0, 0, 1) == 2.0
    assert [var_constant(3.0, si, 5) for si in range(5)] == [3.0] * 5
    assert set(VAR_SCHEDULES) == {"linear", "constant"}


@pytest.mark.parametrize("interval, guided", [
    (-1, [True] * 6),
    (0, [True, True, False, False, False, False]),
    (2, [True, True, True, True, False, False]),
])
def test_llamagen_guided_step_rule(interval, guided):
    assert [llamagen_guided_step(t, interval) for t in range(6)] == guided
