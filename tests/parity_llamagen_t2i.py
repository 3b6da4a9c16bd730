"""LlamaGen text-to-image parity against the official code's fixtures (tests/fixtures/reference/llamagen_t2i/<case>/).

Everything is read from the case's config.json / cases.json (grid, widths, depth, caption length and width,
batch, CFG, sampling, T5 config), so another config passes without code changes. The GPT weights go through
the real loader path (engine.loader.build_module); the T5 encoder through engine.text.
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file

from arnodes.engine.conditioning import Conditioning, TextCondition
from arnodes.engine.generate.canvas import TokenCanvas
from arnodes.engine.generate.next_token import generate_tokens
from arnodes.engine.loader import build_module
from arnodes.engine.models.llamagen import LlamaGenConfig, caption_attention_mask
from arnodes.engine.sampling import SamplingParams, filter_logits
from arnodes.engine.text import T5TextEncoder, caption_condition

LOGIT_TOL = dict(atol=1e-4, rtol=1e-4)  # README.llamagen_t2i.md: logits
PROB_TOL = dict(atol=1e-4, rtol=1e-4)  # probabilities made from those logits
PROJ_TOL = dict(atol=1e-5, rtol=1e-5)  # one MLP on the fixture's own inputs
T5_ATOL = 1e-4


@lru_cache(maxsize=4)
def _load(case: str):
    d = Path(case)
    config = json.loads((d / "config.json").read_text())
    meta = json.loads((d / "cases.json").read_text())
    gpt_cfg = LlamaGenConfig.from_official(config["gpt_model_args"])
    gpt = build_module("llamagen", gpt_cfg, load_file(str(d / "gpt.safetensors")), str(d / "gpt.safetensors"))
    return config, meta, gpt, load_file(str(d / "cases.safetensors"))


def _close(name: str, got: torch.Tensor, want: torch.Tensor, **tol) -> float:
    assert got.shape == want.shape, f"{name}: shape {tuple(got.shape)} vs reference {tuple(want.shape)}"
    diff = (got.float() - want.float()).abs().max().item()
    assert torch.allclose(got.float(), want.float(), **tol), f"{name}: max abs diff {diff:.3g} exceeds {tol}"
    return diff


def _equal(name: str, got: torch.Tensor, want: torch.Tensor) -> None:
    assert got.shape == want.shape, f"{name}: shape {tuple(got.shape)} vs reference {tuple(want.shape)}"
    bad = (got.long() != want.long()).nonzero()
    assert bad.numel() == 0, f"{name}: {len(bad)} entries differ, first at {bad[0].tolist()}"


def check_config(case: Path) -> None:
    config, _, gpt, _ = _load(str(case))
    d = config["gpt_derived"]
    assert gpt.config.is_t2i and gpt.config.head_dim == d["head_dim"] and gpt.config.ffn_hidden == d["ffn_hidden_dim"]
    assert tuple(gpt.cls_embedding.uncond_embedding.shape) == tuple(d["uncond_embedding_shape"])
    assert gpt.freqs_cis.shape[0] == d["freqs_cis_rows"]
    assert gpt.grid_size ** 2 == config["tokens_per_image"]


def check_caption_padding(case: Path) -> None:
    _, _, _, c = _load(str(case))
    for side, left in (("left", True), ("right", False)):
        cond, mask = caption_condition(c["t5_last_hidden_state"], c["t5_attention_mask"], left_padding=left)
        _close(f"cond_{side}", cond, c[f"cond_{side}"], atol=0, rtol=0)
        _equal(f"emb_mask_{side}", mask, c[f"emb_mask_{side}"])


def check_caption_projection(case: Path) -> None:
    _, _, gpt, c = _load(str(case))
    with torch.no_grad():
        _close("cap_proj_left", gpt.cls_embedding(c["cond_left"]), c["cap_proj_left"], **PROJ_TOL)
        _close("cap_proj_uncond", gpt.cls_embedding(gpt.cls_embedding.uncond_embedding[None]),
               c["cap_proj_uncond"], **PROJ_TOL)


def check_attention_mask(case: Path) -> None:
    _, _, _, c = _load(str(case))
    want = c["tf_attn_mask"]
    _equal("tf_attn_mask", caption_attention_mask(c["emb_mask_left"], want.shape[-1]), want.bool())


def check_teacher_forced(case: Path) -> None:
    _, _, gpt, c = _load(str(case))
    with torch.no_grad():
        full = gpt(c["cond_left"], c["tf_tokens"], emb_mask=c["emb_mask_left"], all_positions=True)
        image = gpt(c["cond_left"], c["tf_tokens"])  # plain causal: padded caption keys not hidden
    _close("tf_logits_full", full, c["tf_logits_full"], **LOGIT_TOL)
    _close("tf_logits_causal_image", image, c["tf_logits_causal_image"], **LOGIT_TOL)


def _run(case: Path, prefix: str, side: str, canvas: TokenCanvas | None = None, settings: str = "greedy"):
    config, meta, gpt, c = _load(str(case))
    check = meta["checks"]["generation"][prefix]
    s = config["generation"][settings]
    params = SamplingParams(temperature=s["temperature"], top_k=s["top_k"], top_p=s["top_p"], top_p_style="llamagen")
    cond = Conditioning(text=TextCondition(c[f"cond_{side}"], c[f"emb_mask_{side}"]), cfg=float(check["cfg_scale"]),
                        cfg_interval=int(config["generation"]["cfg_interval"]))
    trace: dict = {}
    steps: list[int] = []
    out = generate_tokens(gpt, cond, canvas, params, torch.Generator().manual_seed(int(check["rng_seed"])),
                          progress=lambda i, n: steps.append(i), trace=trace)
    L = config["tokens_per_image"]
    assert steps == list(range(1, L + 1)), f"progress called with {steps}"
    probs = torch.stack([filter_logits(g, params).softmax(-1) for g in trace["guided_logits"]], 1)  # (B, L, V)
    return out.grids[0].reshape(cond.batch, -1), torch.stack(trace["raw_logits"]), probs


def _greedy(prefix: str, side: str) -> Callable[[Path], None]:
    def check(case: Path) -> None:
        _, _, _, c = _load(str(case))
        tokens, raw, _ = _run(case, prefix, side)
        _equal(f"{prefix}_tokens", tokens, c[f"{prefix}_tokens"])
        _close(f"{prefix}_raw_logits", raw, c[f"{prefix}_raw_logits"], **LOGIT_TOL)
    return check


def check_sampled(case: Path) -> None:
    """Seeded sampling: the step distributions given the reference's own tokens (teacher-forced through a
    fully known canvas), and the tokens of a free run (same torch CPU multinomial stream as the reference)."""
    config, _, gpt, c = _load(str(case))
    want = c["gen_left_sample_tokens"]
    g = gpt.grid_size
    forced = TokenCanvas.from_codes("llamagen", "llamagen", [want.view(-1, g, g).long()])
    _, raw, probs = _run(case, "gen_left_sample", "left", forced, settings="sample")
    _close("gen_left_sample_raw_logits", raw, c["gen_left_sample_raw_logits"], **LOGIT_TOL)
    _close("gen_left_sample_probs", probs, c["gen_left_sample_probs"], **PROB_TOL)
    tokens, _, _ = _run(case, "gen_left_sample", "left", settings="sample")
    _equal("gen_left_sample_tokens", tokens, want)


def check_t5_encoder(case: Path) -> None:
    config, _, _, c = _load(str(case))
    encoder = T5TextEncoder.from_config(config["t5"]["config"], load_file(str(case / "t5_tiny.safetensors")))
    hidden = encoder.encode_ids(c["t5_input_ids"], c["t5_input_attention_mask"])
    _close("t5_encoder_last_hidden_state", hidden, c["t5_encoder_last_hidden_state"], atol=T5_ATOL, rtol=0)


CHECKS: dict[str, Callable[[Path], None]] = {
    "config": check_config,
    "caption_padding": check_caption_padding,
    "caption_projection": check_caption_projection,
    "attention_mask": check_attention_mask,
    "teacher_forced_logits": check_teacher_forced,
    "gen_left_cfg1": _greedy("gen_left_cfg1", "left"),
    "gen_left_cfg": _greedy("gen_left_cfg", "left"),
    "gen_right_cfg": _greedy("gen_right_cfg", "right"),
    "gen_left_sample": check_sampled,
    "t5_encoder": check_t5_encoder,
}
