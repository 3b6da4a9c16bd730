"""ControlAR parity: our LlamaGen + control branch against the official forward (tests/fixtures/reference/controlar/<case>/).

Read from the case's config.json / cases.json only, so another config (grid, widths, depth,
injection pattern, ViT size, image size) passes without code changes. The weights go through
the official-checkpoint loader (``control.controlar.load_official``).
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import torch
from safetensors.torch import load_file

from arnodes.engine.conditioning import Conditioning
from arnodes.engine.control import ControlAdapter, ControlCondition, Preprocessor
from arnodes.engine.control.controlar import load_official
from arnodes.engine.generate.next_token import generate_tokens
from arnodes.engine.sampling import SamplingParams

TOL = dict(atol=1e-4, rtol=1e-4)


@lru_cache(maxsize=4)
def _load(case: str):
    d = Path(case)
    config = json.loads((d / "config.json").read_text())
    sd = load_file(str(d / "gpt.safetensors"))
    gpt, adapter = load_official(sd, config["gpt_model_args"], config["adapter"]["vit_config"], str(d))
    return config, gpt, adapter, load_file(str(d / "cases.safetensors"))


def _close(name: str, got: torch.Tensor, want: torch.Tensor) -> None:
    assert got.shape == want.shape, f"{name}: shape {tuple(got.shape)} vs reference {tuple(want.shape)}"
    diff = (got.float() - want.float()).abs().max().item()
    assert torch.allclose(got.float(), want.float(), **TOL), f"{name}: max abs diff {diff:.3g}"


def check_control_path(case: Path) -> None:
    config, _, adapter, c = _load(str(case))
    with torch.no_grad():
        vit = adapter.adapter.model(c["control_image"])
        _close("adapter_vit_tokens", vit, c["adapter_vit_tokens"])
        _close("adapter_mlp_out", adapter.adapter_mlp(vit), c["adapter_mlp_out"])
        _close("condition_token", adapter.condition_tokens(c["control_image"]), c["condition_token"])
        signal = adapter(c["control_image"])
        null = adapter.condition_tokens(torch.zeros_like(c["control_image"])) * 0  # the null branch adds zero
    _close("condition_token_null", null, c["condition_token_null"])
    blocks = config["gpt_derived"]["condition_injected_before_blocks"]
    assert sorted(signal.per_block) == blocks, f"injected before {sorted(signal.per_block)}, reference {blocks}"
    for i in blocks:
        _close(f"condition_inject_layer{i}", signal.per_block[i], c[f"condition_inject_layer{i}"])


def check_teacher_forced(case: Path) -> None:
    config, gpt, adapter, c = _load(str(case))
    null = config["gpt_derived"]["null_class_index"]
    with torch.no_grad():
        logits = gpt(c["labels"], c["tf_tokens"], control=adapter(c["control_image"]))
        logits_null = gpt(torch.full_like(c["labels"], null), c["tf_tokens"])  # zero condition: nothing added
    _close("tf_logits", logits, c["tf_logits"])
    _close("tf_logits_null", logits_null, c["tf_logits_null"])


def _greedy(prefix: str, cfg_scale: float):
    def check(case: Path) -> None:
        config, gpt, adapter, c = _load(str(case))
        control = ControlCondition(ControlAdapter("fixture", adapter, Preprocessor("none")), c["control_image"])
        cond = Conditioning(tuple(int(v) for v in c["labels"].tolist()), cfg=cfg_scale, control=control)
        trace: dict = {}
        out = generate_tokens(gpt, cond, None, SamplingParams(top_k=1, top_p_style="llamagen"), None, trace=trace)
        tokens = out.grids[0].reshape(cond.batch, -1)
        bad = (tokens != c[f"{prefix}_tokens"]).nonzero()
        assert bad.numel() == 0, f"{prefix}_tokens: {len(bad)} differ, first at {bad[0].tolist()}"
        _close(f"{prefix}_raw_logits", torch.stack(trace["raw_logits"]), c[f"{prefix}_raw_logits"])
    return check


def _cfg(case: str) -> float:
    return float(json.loads((Path(case) / "config.json").read_text())["cfg_scale"])


CHECKS = {
    "control_path": check_control_path,
    "teacher_forced": check_teacher_forced,
    "kv_greedy_cfg1": _greedy("kv_greedy_cfg1", 1.0),
    "kv_greedy_cfg": lambda case: _greedy("kv_greedy_cfg", _cfg(str(case)))(case),
}
