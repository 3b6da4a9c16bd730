"""Control adapters in the engine: strength 0 is plain generation, guidance's null branch is
uncontrolled, the condition reaches the tokens, and the released ControlAR layouts load strictly."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from arnodes.engine.checkpoint import build_on_meta, load_into
from arnodes.engine.classes import ClassNames
from arnodes.engine.conditioning import Conditioning
from arnodes.engine.control import ControlAdapter, ControlCondition, Preprocessor, adapter_config, build_adapter
from arnodes.engine.control.controlar import UNUSED_KEYS, ControlARAdapter, config_from_official, split_state_dict
from arnodes.engine.control.var_cnn import VARControlAdapter, VARControlConfig
from arnodes.engine.errors import CheckpointError, InvalidInputError
from arnodes.engine.generate import generate
from arnodes.engine.loader import ModelBundle
from arnodes.engine.models.llamagen import LlamaGen, LlamaGenConfig
from arnodes.engine.sampling import SamplingParams
from parity_controlar import _load as load_controlar_case
from parity_var import load_case

REF = Path(__file__).resolve().parents[1] / "fixtures" / "reference"
VAR_CASE = REF / "var" / "tiny_a"
CONTROLAR_CASE = REF / "controlar" / "tiny_a"
LAYOUTS = json.loads((REF / "controlar" / "real_checkpoint_layouts.json").read_text())


def _var_bundle():
    cfg, tok, var, _ = load_case(VAR_CASE)
    names = ClassNames([f"class {i}" for i in range(var.num_classes)])
    return ModelBundle(name="tiny", family="var", tokenizer=tok, generator=var, classes=names,
                       image_size=cfg["image_size"])


def _var_adapter(bundle, seed: int = 0) -> ControlAdapter:
    g = bundle.generator.cfg
    stages = 1 + max(0, (bundle.image_size // g.patch_nums[-1]).bit_length() - 1)
    cfg = VARControlConfig(embed_dim=g.embed_dim, depth=g.depth, patch_nums=tuple(g.patch_nums),
                           image_size=bundle.image_size, channels=(8, 16, 16, 16, 16, 16)[:stages])
    module = VARControlAdapter(cfg)
    with torch.no_grad():  # a trained adapter is not zero: give the output projections weights
        gen = torch.Generator().manual_seed(seed)
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    return ControlAdapter("test", module.eval(), Preprocessor("none"))


def _maps(bundle, batch: int) -> torch.Tensor:
    m = -torch.ones(batch, 3, bundle.image_size, bundle.image_size)
    m[:, :, 2:bundle.image_size // 2, 2:bundle.image_size // 2] = 1.0  # a block in the top-left corner
    return m


def _var_tokens(bundle, cond, seed=0):
    out = generate(bundle, cond, None, params=SamplingParams(top_k=20), seed=seed)
    return torch.cat([g.flatten(1) for g in out.grids], 1)


def test_var_strength_zero_is_plain_generation_bit_for_bit():
    bundle = _var_bundle()
    adapter = _var_adapter(bundle)
    plain = _var_tokens(bundle, Conditioning((3, 7), cfg=2.0))
    off = _var_tokens(bundle, Conditioning((3, 7), cfg=2.0, control=ControlCondition(adapter, _maps(bundle, 2), 0.0)))
    on = _var_tokens(bundle, Conditioning((3, 7), cfg=2.0, control=ControlCondition(adapter, _maps(bundle, 2), 1.0)))
    assert torch.equal(plain, off)
    assert (plain != on).float().mean() > 0.2  # the condition reaches the tokens


def test_var_control_null_branch_is_zero_and_maps_broadcast():
    bundle = _var_bundle()
    adapter = _var_adapter(bundle)
    cc = ControlCondition(adapter, _maps(bundle, 1), 0.5)
    sig = cc.signal(bundle.generator, 2, guided=True)
    for t in sig.per_block.values():
        assert t.shape[0] == 4 and torch.equal(t[2:], torch.zeros_like(t[2:])) and t[:2].abs().sum() > 0
        assert torch.equal(t[0], t[1])  # one map for two images
    with pytest.raises(InvalidInputError, match="3 control maps for 2 images"):
        ControlCondition(adapter, _maps(bundle, 3)).signal(bundle.generator, 2, guided=False)


def test_var_control_repeats_with_the_conditioning_batch():
    bundle = _var_bundle()
    adapter = _var_adapter(bundle)
    cond = Conditioning((3, 7), control=ControlCondition(adapter, _maps(bundle, 2))).repeat(2)
    assert cond.batch == 4 and cond.control.maps.shape[0] == 4


def test_adapter_for_another_generator_is_refused():
    bundle = _var_bundle()
    g = bundle.generator.cfg
    cfg = VARControlConfig(embed_dim=g.embed_dim * 2, depth=g.depth, patch_nums=tuple(g.patch_nums),
                           image_size=bundle.image_size, channels=(8,) * (1 + (bundle.image_size // g.patch_nums[-1]).bit_length() - 1))
    adapter = ControlAdapter("wide", VARControlAdapter(cfg).eval(), Preprocessor())
    with pytest.raises(InvalidInputError, match="control adapter made for width"):
        _var_tokens(bundle, Conditioning((3,), control=ControlCondition(adapter, _maps(bundle, 1))))


def test_bad_control_inputs_are_named():
    bundle = _var_bundle()
    adapter = _var_adapter(bundle)
    with pytest.raises(InvalidInputError, match="strength"):
        ControlCondition(adapter, _maps(bundle, 1), 3.0)
    with pytest.raises(InvalidInputError, match=r"\[B, 3, H, W\]"):
        ControlCondition(adapter, torch.zeros(1, 64, 64))
    with pytest.raises(InvalidInputError, match="unknown control adapter kind"):
        adapter_config("controlnet-xl", {})


def test_controlar_strength_zero_is_plain_and_strength_scales_the_condition():
    _, gpt, adapter, c = load_controlar_case(str(CONTROLAR_CASE))
    ca = ControlAdapter("fixture", adapter, Preprocessor())
    labels = tuple(int(v) for v in c["labels"].tolist())
    params = SamplingParams(top_k=20, top_p_style="llamagen")

    def tokens(cond):
        from arnodes.engine.generate.next_token import generate_tokens
        return generate_tokens(gpt, cond, None, params, torch.Generator().manual_seed(1)).grids[0]

    plain = tokens(Conditioning(labels, cfg=3.0))
    assert torch.equal(plain, tokens(Conditioning(labels, cfg=3.0, control=ControlCondition(ca, c["control_image"], 0.0))))
    full = tokens(Conditioning(labels, cfg=3.0, control=ControlCondition(ca, c["control_image"], 1.0)))
    assert not torch.equal(plain, full)
    sig = ControlCondition(ca, c["control_image"], 0.5).signal(gpt, 2, guided=False)
    with torch.no_grad():
        ref = adapter(c["control_image"])
    for i, t in sig.per_block.items():
        assert torch.allclose(t, 0.5 * ref.per_block[i])


def test_controlar_resizes_other_map_sizes():
    _, _, adapter, c = load_controlar_case(str(CONTROLAR_CASE))
    big = torch.nn.functional.interpolate(c["control_image"], scale_factor=2, mode="nearest")
    with torch.no_grad():
        tokens = adapter.condition_tokens(big)
    assert tokens.shape == c["condition_token"].shape


def _official_layout(entry: dict, vit_layers: int) -> dict[str, tuple[int, ...]]:
    out: dict[str, tuple[int, ...]] = {}
    n_layer = entry["model_args"]["n_layer"]
    for key, shape in entry["keys_layer0_and_globals"].items():
        if key.startswith("layers.0."):
            out.update({f"layers.{i}.{key[9:]}": tuple(shape) for i in range(n_layer)})
        elif key.startswith("adapter.model.encoder.layer.0."):
            rest = key[len("adapter.model.encoder.layer.0."):]
            out.update({f"adapter.model.encoder.layer.{i}.{rest}": tuple(shape) for i in range(vit_layers)})
        else:
            out[key] = tuple(shape)
    return out


VIT_S16 = {"hidden_size": 384, "num_hidden_layers": 12, "num_attention_heads": 6, "intermediate_size": 1536,
           "image_size": 224, "patch_size": 16}


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_released_controlar_layouts_load_strictly_on_meta(name):
    entry = LAYOUTS[name]
    layout = _official_layout(entry, VIT_S16["num_hidden_layers"])
    assert len(layout) == entry["n_tensors"]
    assert sum(torch.Size(s).numel() for s in layout.values()) == entry["n_params_incl_buffers"]
    sd = {k: torch.empty(s, device="meta") for k, s in layout.items()}
    gpt_sd, control_sd = split_state_dict(sd)
    cfg = config_from_official(entry["model_args"], VIT_S16)
    assert list(cfg.injected_blocks) == entry["condition_injected_before_blocks"]
    adapter = build_on_meta(lambda: ControlARAdapter(cfg))
    load_into(adapter, adapter.remap_state_dict(control_sd), name)  # strict: every key used or known-unused
    assert set(control_sd) - set(adapter.state_dict()) == set(UNUSED_KEYS)
    vit = sum(p.numel() for k, p in adapter.named_parameters() if k.startswith("adapter.model."))
    assert vit + 384 * 384 + 384 == entry["n_params_adapter_vit"]  # + the (unused) pooler
    gpt = build_on_meta(lambda: LlamaGen(LlamaGenConfig.from_official(entry["model_args"])))
    load_into(gpt, LlamaGen.remap_state_dict(gpt_sd), name)


def test_controlar_checkpoint_errors_are_clear():
    with pytest.raises(CheckpointError, match="no ControlAR control branch"):
        split_state_dict({"tok_embeddings.weight": torch.zeros(2, 2)})
    entry = LAYOUTS[sorted(LAYOUTS)[0]]
    with pytest.raises(InvalidInputError, match="multiple of 3"):
        config_from_official({**entry["model_args"], "n_layer": 4}, VIT_S16)
    with pytest.raises(InvalidInputError, match="condition_token_num"):
        config_from_official({**entry["model_args"], "condition_token_num": 120}, VIT_S16)
    cfg = config_from_official(entry["model_args"], {**VIT_S16, "num_hidden_layers": 1})
    sd = build_adapter("controlar", cfg, None, "x").state_dict()
    sd.pop("adapter_mlp.fc1.weight")
    with pytest.raises(CheckpointError, match="adapter_mlp.fc1.weight"):
        build_adapter("controlar", cfg, sd, "file.pt")
