"""VAR transformer: the KV-cached scale loop agrees with teacher forcing, for every architecture variant."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from arnodes.engine.conditioning import Conditioning
from arnodes.engine.generate.canvas import TokenCanvas
from arnodes.engine.generate.next_scale import generate_scales
from arnodes.engine.models.var import VAR, VARConfig
from arnodes.engine.sampling import SamplingParams
from arnodes.engine.tokenizers.msvq import MSVQConfig, MSVQTokenizer
from parity_var import load_case

CASE = Path(__file__).resolve().parents[1] / "fixtures" / "reference" / "var" / "tiny_a"
PNS = (1, 2, 3, 4)
TOK_CFG = MSVQConfig(vocab_size=64, z_channels=4, ch=32, ch_mult=(1, 1), num_res_blocks=1, patch_nums=PNS,
                     share_quant_resi=4, using_sa=False, using_mid_sa=False)
VAR_CFG = VARConfig(num_classes=5, depth=2, embed_dim=64, num_heads=2, patch_nums=PNS, vocab_size=64, cvae=4)
VARIANTS = {
    "plain": VAR_CFG,
    "shared_aln": dataclasses.replace(VAR_CFG, shared_aln=True),
    "no_l2_norm": dataclasses.replace(VAR_CFG, attn_l2_norm=False),
}


def tiny_models(cfg: VARConfig, seed: int = 0) -> tuple[VAR, MSVQTokenizer]:
    """Seeded random models; every parameter perturbed so zero-initialised ones matter, peaky head."""
    torch.manual_seed(seed)
    tok = MSVQTokenizer(TOK_CFG).eval().requires_grad_(False)
    var = VAR(cfg).eval().requires_grad_(False)
    with torch.no_grad():
        for p in var.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        var.head.weight.mul_(8)
    return var, tok


def greedy_then_teacher_force(var: VAR, tok: MSVQTokenizer, labels: list[int]):
    pns = var.cfg.patch_nums
    canvas = TokenCanvas.empty("var", "t", [(p, p) for p in pns], len(labels))
    trace: dict = {}
    out = generate_scales(var, tok, Conditioning(tuple(labels), cfg=0.0), canvas, SamplingParams(top_k=1), None,
                          trace=trace)
    tokens = torch.cat([g.flatten(1) for g in out.grids], 1)  # (B, L)
    cached_logits = torch.cat(trace["logits"], 1)
    with torch.no_grad():
        tf_logits = var(torch.tensor(labels), tok.scales_to_var_input(out.grids))
    return tokens, cached_logits, tf_logits


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_cached_greedy_equals_teacher_forced_argmax(variant):
    var, tok = tiny_models(VARIANTS[variant])
    tokens, cached, tf = greedy_then_teacher_force(var, tok, [0, 3, 4])
    L = var.cfg.tokens_per_image
    assert tokens.shape == (3, L) and tf.shape == (3, L, var.cfg.vocab_size)
    assert torch.equal(tf.argmax(-1), tokens)
    assert (cached - tf).abs().max().item() <= 1e-4


def test_fixture_model_cached_equals_teacher_forced():
    _, tok, var, _ = load_case(CASE)
    tokens, cached, tf = greedy_then_teacher_force(var, tok, [1, 7, 3])
    assert torch.equal(tf.argmax(-1), tokens)
    assert (cached - tf).abs().max().item() <= 1e-4


def test_shared_aln_layout_and_run():
    var, tok = tiny_models(VARIANTS["shared_aln"])
    keys = set(var.state_dict())
    C = var.cfg.embed_dim
    assert "shared_ada_lin.1.weight" in keys and "blocks.0.ada_gss" in keys
    assert not any(".ada_lin." in k for k in keys if k.startswith("blocks."))
    assert var.state_dict()["shared_ada_lin.1.weight"].shape == (6 * C, C)
    assert var.state_dict()["blocks.1.ada_gss"].shape == (1, 1, 6, C)
    tokens, _, tf = greedy_then_teacher_force(var, tok, [2])
    assert torch.isfinite(tf).all()


def test_no_l2_norm_has_no_scale_mul_and_runs():
    var, tok = tiny_models(VARIANTS["no_l2_norm"])
    assert not any("scale_mul_1H11" in k for k in var.state_dict())
    assert var.blocks[0].attn.scale == pytest.approx(0.25 / (var.cfg.head_dim ** 0.5))
    tokens, _, tf = greedy_then_teacher_force(var, tok, [1])
    assert torch.isfinite(tf).all()


def test_teacher_forcing_is_block_causal():
    """Changing the tokens of the last scale must not change the logits of earlier scales."""
    var, tok = tiny_models(VAR_CFG)
    tokens, _, _ = greedy_then_teacher_force(var, tok, [1])
    grids = [t.clone() for t in TokenCanvas.empty("var", "t", [(p, p) for p in PNS], 1).grids]
    start = 0
    for g, pn in zip(grids, PNS):
        g.copy_(tokens[:, start:start + pn * pn].view(1, pn, pn))
        start += pn * pn
    other = [g.clone() for g in grids]
    other[-2] = (other[-2] + 1) % var.cfg.vocab_size  # changes the input of the last scale only
    labels = torch.tensor([1])
    with torch.no_grad():
        a = var(labels, tok.scales_to_var_input(grids))
        b = var(labels, tok.scales_to_var_input(other))
    last = PNS[-1] ** 2
    assert torch.equal(a[:, :-last], b[:, :-last])
    assert not torch.equal(a[:, -last:], b[:, -last:])


def test_teacher_forcing_on_the_first_scales_alone():
    """A var_input that stops after a scale gives exactly the full sequence's logits of those scales
    (training's coarse batch relies on it); a cut inside a scale is refused."""
    var, tok = tiny_models(VAR_CFG)
    tokens, _, full = greedy_then_teacher_force(var, tok, [1, 3])
    var_input = tok.scales_to_var_input([tokens[:, :1].view(2, 1, 1), tokens[:, 1:5].view(2, 2, 2),
                                         tokens[:, 5:14].view(2, 3, 3), tokens[:, 14:].view(2, 4, 4)])
    assert var.scale_ends() == [1, 5, 14, 30]
    labels = torch.tensor([1, 3])
    with torch.no_grad():
        for end in (1, 5, 14):
            prefix = var(labels, var_input[:, :end - 1])
            assert prefix.shape == (2, end, var.cfg.vocab_size)
            assert torch.allclose(prefix, full[:, :end], atol=1e-5)
        with pytest.raises(ValueError, match="whole number of scales"):
            var(labels, var_input[:, :6])


def test_caches_are_reused_and_cleared():
    var, tok = tiny_models(VAR_CFG)
    var.setup_caches(4)
    first = var.blocks[0].attn.kv_cache
    var.setup_caches(2)  # a smaller batch fits the existing cache
    assert var.blocks[0].attn.kv_cache is first
    var.clear_caches()
    assert all(b.attn.kv_cache is None for b in var.blocks)
