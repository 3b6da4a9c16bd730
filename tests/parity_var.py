"""VAR parity checks against tensors produced by the official code (see fixtures/README.var.md).

Everything is read from the case's config.json, so another case (other
patch_nums, depth, vocabulary, shared AdaLN, ...) runs without code changes.
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import torch
from safetensors.torch import load_file

from arnodes.engine.conditioning import Conditioning
from arnodes.engine.generate.canvas import TokenCanvas
from arnodes.engine.generate.next_scale import generate_scales, scale_known_masks
from arnodes.engine.loader import build_module
from arnodes.engine.models.var import VARConfig
from arnodes.engine.sampling import SamplingParams
from arnodes.engine.tokenizers.msvq import MSVQConfig

LOGITS_ATOL, IMAGE_ATOL = 1e-4, 2e-4


def msvq_config(cfg: dict) -> MSVQConfig:
    vk, fixed = cfg["vqvae_kwargs"], cfg["vqvae_fixed"]
    return MSVQConfig(
        vocab_size=vk["vocab_size"], z_channels=vk["z_channels"], ch=vk["ch"], ch_mult=tuple(fixed["ch_mult"]),
        num_res_blocks=fixed["num_res_blocks"], patch_nums=tuple(vk["v_patch_nums"]), quant_resi=fixed["quant_resi"],
        share_quant_resi=vk["share_quant_resi"], using_sa=fixed["using_sa"], using_mid_sa=fixed["using_mid_sa"],
        beta=fixed["beta"], quant_conv_ks=fixed["quant_conv_ks"])


def var_config(cfg: dict) -> VARConfig:
    vk = cfg["var_kwargs"]
    return VARConfig(
        num_classes=vk["num_classes"], depth=vk["depth"], embed_dim=vk["embed_dim"], num_heads=vk["num_heads"],
        mlp_ratio=vk.get("mlp_ratio", 4.0), norm_eps=vk["norm_eps"], shared_aln=vk["shared_aln"],
        attn_l2_norm=vk["attn_l2_norm"], patch_nums=tuple(vk["patch_nums"]),
        vocab_size=cfg["vqvae_kwargs"]["vocab_size"], cvae=cfg["vqvae_kwargs"]["z_channels"])


@lru_cache(maxsize=4)
def load_case(case_dir: Path):
    cfg = json.loads((case_dir / "config.json").read_text())
    tok = build_module("msvq", msvq_config(cfg), load_file(str(case_dir / "vae.safetensors")), "vae.safetensors")
    var = build_module("var", var_config(cfg), load_file(str(case_dir / "var.safetensors")), "var.safetensors")
    return cfg, tok, var, load_file(str(case_dir / "cases.safetensors"))


def split_scales(idx_BL: torch.Tensor, patch_nums) -> list[torch.Tensor]:
    out, start = [], 0
    for pn in patch_nums:
        out.append(idx_BL[:, start:start + pn * pn].reshape(-1, pn, pn))
        start += pn * pn
    return out


def flat(grids: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([g.flatten(1) for g in grids], dim=1)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, atol: float, what: str) -> None:
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} vs {tuple(expected.shape)}"
    err = (actual.float() - expected.float()).abs().max().item()
    assert err <= atol, f"{what}: max abs error {err:.3g} > {atol}"


def check_tokenize(case_dir: Path) -> None:
    cfg, tok, _, c = load_case(case_dir)
    codes = tok.encode_scales(c["vae_input_images"])
    assert torch.equal(flat(codes), c["vae_idx"]), "token indices differ from the official tokenizer"


def check_fhat_and_decode(case_dir: Path) -> None:
    cfg, tok, _, c = load_case(case_dir)
    codes = split_scales(c["vae_idx"], cfg["patch_nums"])
    for k in range(1, len(codes) + 1):
        assert_close(tok.scales_to_fhat(codes, k), c["vae_fhat_per_scale"][k - 1], LOGITS_ATOL, f"f_hat after scale {k}")
        assert_close(tok.decode_scales(codes, k), c["vae_decode_per_scale"][k - 1], IMAGE_ATOL, f"image from {k} scales")
    assert_close(tok.decode_scales(codes), c["vae_decode_last"], IMAGE_ATOL, "decoded image")


def check_teacher_forcing(case_dir: Path) -> None:
    cfg, tok, var, c = load_case(case_dir)
    codes = split_scales(c["vae_idx"], cfg["patch_nums"])
    var_input = tok.scales_to_var_input(codes)
    assert_close(var_input, c["var_tf_input"], 1e-5, "teacher-forcing input")
    with torch.no_grad():
        logits = var(c["var_tf_labels"], c["var_tf_input"])
    assert_close(logits, c["var_tf_logits"], LOGITS_ATOL, "teacher-forced logits")


def _run(case_dir: Path, labels, canvas: TokenCanvas | None, run: dict):
    cfg, tok, var, c = load_case(case_dir)
    pns = cfg["patch_nums"]
    labels = [int(x) for x in labels]
    if canvas is None:
        canvas = TokenCanvas.empty("var", "t", [(p, p) for p in pns], len(labels))
    gen = torch.Generator().manual_seed(run["g_seed"])
    params = SamplingParams(top_k=run["top_k"], top_p=run["top_p"], top_p_style="var", more_smooth=run["more_smooth"])
    trace: dict = {}
    out = generate_scales(var, tok, Conditioning(tuple(labels), cfg=run["cfg"]), canvas, params, gen, trace=trace)
    images = tok.decode_scales(out.grids).add(1).mul(0.5)
    return out, trace, images


def check_generation(case_dir: Path) -> None:
    cfg, _, _, c = load_case(case_dir)
    for tag, run in cfg["generation"]["runs"].items():
        out, trace, images = _run(case_dir, c["gen_labels"].tolist(), None, run)
        assert torch.equal(flat(out.grids), c[f"gen_{tag}_idx"]), f"gen {tag}: tokens differ from the official run"
        assert_close(torch.cat(trace["logits"], 1), c[f"gen_{tag}_logits"], LOGITS_ATOL, f"gen {tag} logits")
        assert_close(images, c[f"gen_{tag}_images"], IMAGE_ATOL, f"gen {tag} images")


def check_zero_shot_edit(case_dir: Path) -> None:
    cfg, _, _, c = load_case(case_dir)
    pns = cfg["patch_nums"]
    for tag, run in cfg["zero_shot_edit"].items():
        labels = run["labels"]
        keep = c[f"edit_{tag}_mask"].unsqueeze(0).expand(len(labels), -1, -1)  # official: 1 = keep
        known = scale_known_masks(keep, tuple(pns))
        canvas = TokenCanvas("var", "t", split_scales(c["vae_idx"][:len(labels)], pns), known)
        run = {**run, "more_smooth": False}
        out, trace, images = _run(case_dir, labels, canvas, run)
        assert torch.equal(torch.cat(trace["sampled"], 1), c[f"edit_{tag}_sampled_idx"]), f"edit {tag}: sampled tokens differ"
        assert torch.equal(flat(out.grids), c[f"edit_{tag}_used_idx"]), f"edit {tag}: used tokens differ"
        assert_close(torch.cat(trace["logits"], 1), c[f"edit_{tag}_logits"], LOGITS_ATOL, f"edit {tag} logits")
        assert_close(images, c[f"edit_{tag}_images"], IMAGE_ATOL, f"edit {tag} images")


CHECKS = {
    "tokenize": check_tokenize,
    "fhat_decode": check_fhat_and_decode,
    "teacher_forcing": check_teacher_forcing,
    "generation": check_generation,
    "zero_shot_edit": check_zero_shot_edit,
}
