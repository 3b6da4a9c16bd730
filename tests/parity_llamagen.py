"""LlamaGen parity checks against the official code's fixtures (tests/fixtures/reference/llamagen/<case>/).

Everything is read from the case's config.json / cases.json, so another config (image
size, downsample, widths, depth, vocab, classes, CFG) passes without code changes.
Weights go through the real loader path (engine.loader.build_module).
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file

from arnodes.engine.conditioning import Conditioning
from arnodes.engine.generate.next_token import generate_tokens
from arnodes.engine.loader import build_module
from arnodes.engine.models.llamagen import LlamaGenConfig
from arnodes.engine.sampling import SamplingParams, filter_logits
from arnodes.engine.tokenizers.vq import VQConfig

LOGIT_TOL = dict(atol=1e-4, rtol=1e-4)
IMAGE_ATOL = 2e-4
PROB_ATOL = 1e-5


@lru_cache(maxsize=4)
def _load(case: str):
    d = Path(case)
    config = json.loads((d / "config.json").read_text())
    meta = json.loads((d / "cases.json").read_text())
    vq_cfg = VQConfig.from_official(config["vq_model_args"], config.get("vq_encoder_decoder_kwargs"),
                                    config["image_size"])
    gpt_cfg = LlamaGenConfig.from_official(config["gpt_model_args"])
    vq = build_module("vq", vq_cfg, load_file(str(d / "vq.safetensors")), str(d / "vq.safetensors"))
    gpt = build_module("llamagen", gpt_cfg, load_file(str(d / "gpt.safetensors")), str(d / "gpt.safetensors"))
    cases = load_file(str(d / "cases.safetensors"))
    return config, meta, vq, gpt, cases


def _close(name: str, got: torch.Tensor, want: torch.Tensor, **tol) -> None:
    assert got.shape == want.shape, f"{name}: shape {tuple(got.shape)} vs reference {tuple(want.shape)}"
    diff = (got.float() - want.float()).abs().max().item()
    assert torch.allclose(got.float(), want.float(), **tol), f"{name}: max abs diff {diff:.3g} exceeds {tol}"


def _equal(name: str, got: torch.Tensor, want: torch.Tensor) -> None:
    assert got.shape == want.shape, f"{name}: shape {tuple(got.shape)} vs reference {tuple(want.shape)}"
    bad = (got.long() != want.long()).nonzero()
    assert bad.numel() == 0, f"{name}: {len(bad)} indices differ, first at {bad[0].tolist()}"


def check_vq_encode(case: Path) -> None:
    config, _, vq, _, c = _load(str(case))
    x = c["vq_input_images"]
    g = config["token_grid"]
    assert vq.downsample == config["downsample"]
    assert vq.grid_shapes_for(config["image_size"]) == [tuple(g)]
    with torch.no_grad():
        _close("vq_encode_prequant", vq.encode_prequant(x), c["vq_encode_prequant"], atol=1e-4, rtol=1e-4)
        quant, codes = vq.encode(x)
    _close("vq_encode_quant", quant, c["vq_encode_quant"], atol=1e-5, rtol=1e-5)
    _equal("vq_encode_indices", codes.reshape(x.shape[0], -1), c["vq_encode_indices"])
    _equal("encode_grids", vq.encode_grids(x)[0].reshape(x.shape[0], -1), c["vq_encode_indices"])


def check_vq_decode(case: Path) -> None:
    config, _, vq, _, c = _load(str(case))
    idx = c["vq_encode_indices"]
    g = config["token_grid"]
    shape = [idx.shape[0], config["vq_model_args"]["codebook_embed_dim"], g[0], g[1]]
    with torch.no_grad():
        img = vq.decode_code(idx, shape)
    _close("vq_decode_code_images", img, c["vq_decode_code_images"], atol=IMAGE_ATOL, rtol=0)
    clamped = vq.decode_grids([idx.view(idx.shape[0], g[0], g[1])])
    _close("decode_grids", clamped, c["vq_decode_code_images"].clamp(-1, 1), atol=IMAGE_ATOL, rtol=0)


def check_rope(case: Path) -> None:
    _, _, _, gpt, c = _load(str(case))
    _close("gpt_freqs_cis", gpt.freqs_cis, c["gpt_freqs_cis"], atol=1e-6, rtol=0)


def check_teacher_forced(case: Path) -> None:
    _, _, _, gpt, c = _load(str(case))
    with torch.no_grad():
        logits = gpt(c["gpt_tf_labels"], c["gpt_tf_tokens"])
    _close("gpt_tf_logits", logits, c["gpt_tf_logits"], **LOGIT_TOL)


def _generate(case: Path, prefix: str):
    config, meta, vq, gpt, c = _load(str(case))
    gen = config["generation"]
    setting = meta["checks"]["generation"][prefix]
    cond = Conditioning(tuple(int(v) for v in c["gen_labels"].tolist()), cfg=float(setting["cfg_scale"]),
                        cfg_interval=int(setting["cfg_interval"]))
    params = SamplingParams(temperature=gen["temperature"], top_k=gen["top_k"], top_p=gen["top_p"],
                            top_p_style="llamagen")
    trace: dict = {}
    steps: list[int] = []
    out = generate_tokens(gpt, cond, None, params, torch.Generator().manual_seed(0),
                          progress=lambda i, n: steps.append(i), trace=trace)
    L = config["tokens_per_image"]
    assert steps == list(range(1, L + 1)), f"progress called with {steps}"
    tokens = out.grids[0].reshape(cond.batch, -1)
    _equal(f"{prefix}_tokens", tokens, c[f"{prefix}_tokens"])
    _close(f"{prefix}_raw_logits", torch.stack(trace["raw_logits"]), c[f"{prefix}_raw_logits"], **LOGIT_TOL)
    if f"{prefix}_images" in c:
        g = config["token_grid"]
        with torch.no_grad():
            img = vq.decode_code(tokens, [cond.batch, config["vq_model_args"]["codebook_embed_dim"], g[0], g[1]])
        _close(f"{prefix}_images", img, c[f"{prefix}_images"], atol=IMAGE_ATOL, rtol=0)


def _sample_filter(name: str) -> Callable[[Path], None]:
    def check(case: Path) -> None:
        _, meta, _, _, c = _load(str(case))
        s = meta["checks"]["sample_filter_cases"][name]
        params = SamplingParams(temperature=s["temperature"], top_k=s["top_k"], top_p=s["top_p"],
                                top_p_style="llamagen")
        probs = filter_logits(c["sample_filter_logits"], params).softmax(dim=-1)
        _close(f"sample_filter_probs_{name}", probs, c[f"sample_filter_probs_{name}"], atol=PROB_ATOL, rtol=0)
    return check


def _sample_filter_all(case: Path) -> None:
    _, meta, _, _, _ = _load(str(case))
    for name in meta["checks"]["sample_filter_cases"]:
        _sample_filter(name)(case)


CHECKS: dict[str, Callable[[Path], None]] = {
    "vq_encode": check_vq_encode,
    "vq_decode_code": check_vq_decode,
    "rope_table": check_rope,
    "teacher_forced_logits": check_teacher_forced,
    "gen_cfg1": lambda case: _generate(case, "gen_cfg1"),
    "gen_cfg": lambda case: _generate(case, "gen_cfg"),
    "gen_cfg_interval": lambda case: _generate(case, "gen_cfg_interval"),
    "sample_filter_probs": _sample_filter_all,
}
