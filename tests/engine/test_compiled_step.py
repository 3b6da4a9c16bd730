"""The compiled decode step: same tokens as the official code (parity fixtures), and the switch itself."""
from __future__ import annotations

import logging

import parity_llamagen as pl
import parity_llamagen_t2i as pt
import parity_var as pv
import pytest
import torch
from conftest import REFERENCE_DIR

from arnodes.engine.errors import InvalidInputError
from arnodes.engine.generate import compiled
from arnodes.engine.generate.compiled import step_function, wants_compile


@pytest.fixture
def compile_on():
    compiled.set_default_mode("on")
    yield
    compiled.set_default_mode(None)


def test_llamagen_parity_with_the_compiled_step(compile_on):
    case = REFERENCE_DIR / "llamagen" / "tiny_a"
    _, _, _, gpt, _ = pl._load(str(case))
    pl._generate(case, "gen_cfg")  # tokens exact, logits within the fixture tolerance
    step = gpt.__dict__["_arnodes_steps"]["decode_step"]
    assert step.compiled is not None and not step.failed, "the decode step did not run compiled"


def test_llamagen_t2i_parity_with_the_compiled_step(compile_on):
    """The compiled step of a text-to-image model: the caption key mask lives in a static buffer."""
    case = REFERENCE_DIR / "llamagen_t2i" / "tiny_a"
    _, _, gpt, _ = pt._load(str(case))
    pt.CHECKS["gen_left_cfg"](case)  # tokens exact, logits within the fixture tolerance
    step = gpt.__dict__["_arnodes_steps"]["decode_step"]
    assert step.compiled is not None and not step.failed, "the decode step did not run compiled"


def test_var_parity_with_the_compiled_step(compile_on):
    case = REFERENCE_DIR / "var" / "tiny_a"
    cfg, _, var, c = pv.load_case(case)
    tag, run = next((t, r) for t, r in cfg["generation"]["runs"].items() if r["cfg"] > 0)
    out, trace, images = pv._run(case, c["gen_labels"].tolist(), None, run)
    assert torch.equal(pv.flat(out.grids), c[f"gen_{tag}_idx"]), f"gen {tag}: tokens differ from the official run"
    pv.assert_close(torch.cat(trace["logits"], 1), c[f"gen_{tag}_logits"], pv.LOGITS_ATOL, f"gen {tag} logits")
    step = var.__dict__["_arnodes_steps"]["scale_step"]
    assert step.compiled is not None and not step.failed, "the scale step did not run compiled"
    # the CPU gives the KV caches back after each image: the next image's new caches reuse the graphs
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    again, _, _ = pv._run(case, c["gen_labels"].tolist(), None, run)
    assert torch.equal(pv.flat(again.grids), c[f"gen_{tag}_idx"])
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs, "a second image recompiled the step"


def test_switch_modes(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert not wants_compile("auto", cpu) and wants_compile("auto", cuda)
    assert wants_compile("on", cpu) and not wants_compile("off", cuda)
    monkeypatch.setenv(compiled.ENV_VAR, "on")
    assert wants_compile(None, cpu)
    compiled.set_default_mode("off")
    try:
        assert not wants_compile(None, cpu)  # the CLI's flag wins over the environment
    finally:
        compiled.set_default_mode(None)
    monkeypatch.setenv(compiled.ENV_VAR, "sometimes")
    with pytest.raises(InvalidInputError, match="sometimes"):
        wants_compile(None, cpu)


def test_a_failed_compile_falls_back_to_eager(monkeypatch, caplog):
    class Toy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(3))

        def step(self, x):
            return x * self.w

    def broken(*args, **kwargs):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(torch, "compile", lambda fn, **kw: broken)
    toy = Toy()
    with caplog.at_level(logging.WARNING):
        out = step_function(toy, "step")(True, torch.full((3,), 2.0))
    assert torch.equal(out, torch.full((3,), 2.0))
    assert "no C++ compiler" in caplog.text and step_function(toy, "step").failed
