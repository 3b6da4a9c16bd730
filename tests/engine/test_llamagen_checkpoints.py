"""LlamaGen configs, official checkpoint layouts, nesting, and clear loading errors."""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from arnodes.engine.checkpoint import build_on_meta, load_into
from arnodes.engine.errors import ArnodesError, CheckpointError, InvalidInputError, UnknownNameError
from arnodes.engine.loader import build_module, load_module_file, preset_config
from arnodes.engine.models.llamagen import PRESETS as GPT_PRESETS
from arnodes.engine.models.llamagen import LlamaGen, LlamaGenConfig
from arnodes.engine.registry import REGISTRY, get_entry
from arnodes.engine.tokenizers.vq import PRESETS as VQ_PRESETS
from arnodes.engine.tokenizers.vq import VQConfig, VQTokenizer

REF = Path(__file__).resolve().parents[1] / "fixtures" / "reference" / "llamagen"
LAYOUTS = json.loads((REF / "real_checkpoint_layouts.json").read_text())
CASE = REF / "tiny_a"
ARCH = {"B": "GPT-B", "L": "GPT-L", "XL": "GPT-XL", "XXL": "GPT-XXL", "3B": "GPT-3B"}


def official_gpt_layout(entry: dict) -> dict[str, tuple[int, ...]]:
    """Globals + layers.0 from the JSON, repeated for every layer."""
    n_layer = entry["model_args"]["n_layer"]
    out: dict[str, tuple[int, ...]] = {}
    for key, shape in entry["keys_layer0_and_globals"].items():
        if key.startswith("layers.0."):
            for i in range(n_layer):
                out[f"layers.{i}." + key[len("layers.0."):]] = tuple(shape)
        else:
            out[key] = tuple(shape)
    return out


def meta_sd(layout: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    return {k: torch.empty(shape, device="meta") for k, shape in layout.items()}


@pytest.mark.parametrize("name", sorted(k for k in LAYOUTS if k.startswith("c2i_")))
def test_released_gpt_configs_build_on_meta_and_load_strictly(name):
    entry = LAYOUTS[name]
    arch, size = ARCH[name.split("_")[1]], int(name.split("_")[2])
    cfg = dataclasses.replace(preset_config("llamagen", arch), block_size=(size // 16) ** 2)
    assert cfg == LlamaGenConfig.from_official(entry["model_args"])
    assert cfg.ffn_hidden == entry["ffn_hidden_dim"]
    model = build_on_meta(lambda: LlamaGen(cfg))
    assert sum(p.numel() for p in model.parameters()) == entry["n_params"]
    layout = official_gpt_layout(entry)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == layout
    sd = meta_sd(layout)
    sd["freqs_cis"] = torch.empty(257, 32, 2, device="meta")  # saved by some tools; recomputed, ignored
    load_into(model, LlamaGen.remap_state_dict(sd), name)
    model.post_load()
    assert model.freqs_cis.shape == (1 + cfg.block_size, cfg.head_dim // 2, 2)


def test_released_vq_layout_loads_strictly():
    layout = {k: tuple(v) for k, v in LAYOUTS["vq_ds16_c2i"]["keys"].items()}
    model = build_on_meta(lambda: VQTokenizer(VQ_PRESETS["vq_ds16_c2i"]))
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == layout
    load_into(model, meta_sd(layout), "vq_ds16_c2i", optional=VQTokenizer.OPTIONAL_STATE_KEYS)
    assert model.downsample == 16 and model.grid_shapes_for(256) == [(16, 16)]
    assert VQ_PRESETS["vq_ds8_c2i"].downsample == 8


def test_registry_entries_resolve_to_presets():
    for name, entry in REGISTRY.items():
        if entry.family != "llamagen":
            continue
        assert entry.generator_preset in GPT_PRESETS and entry.tokenizer_preset in VQ_PRESETS
        grid = entry.image_size // VQ_PRESETS[entry.tokenizer_preset].downsample
        cfg = dataclasses.replace(GPT_PRESETS[entry.generator_preset], block_size=grid * grid)
        assert cfg.grid_size == grid
    with pytest.raises(UnknownNameError, match="llamagen-c2i-b-256"):
        get_entry("llamagen-c2i-b-512")
    with pytest.raises(InvalidInputError, match="GPT-B"):
        preset_config("llamagen", "GPT-Huge")


def _tiny_configs() -> tuple[VQConfig, LlamaGenConfig]:
    config = json.loads((CASE / "config.json").read_text())
    return (VQConfig.from_official(config["vq_model_args"], config["vq_encoder_decoder_kwargs"]),
            LlamaGenConfig.from_official(config["gpt_model_args"]))


@pytest.mark.parametrize("nesting", ["ddp", "fsdp", "module", "with_extras"])
def test_checkpoint_nesting(tmp_path, nesting):
    vq_cfg, gpt_cfg = _tiny_configs()
    sd = load_file(str(CASE / "gpt.safetensors"))
    obj = {"ddp": {"model": sd, "steps": torch.tensor(3)}, "fsdp": dict(sd), "module": {"module": sd},
           "with_extras": {**sd, "freqs_cis": torch.zeros(17, 16, 2)}}[nesting]
    path = tmp_path / "c2i.pt"
    torch.save(obj, path)
    model = load_module_file("llamagen", gpt_cfg, path)
    assert torch.equal(model.output.weight, sd["output.weight"])
    vq_sd = load_file(str(CASE / "vq.safetensors"))
    vq_sd.pop("quantize.codebook_used")  # optional buffer
    torch.save({"model": vq_sd, "optimizer": {"state": {}}}, tmp_path / "vq.pt")
    vq = load_module_file("vq", vq_cfg, tmp_path / "vq.pt")
    assert torch.equal(vq.quantize.embedding.weight, vq_sd["quantize.embedding.weight"])


def test_checkpoint_errors_are_clear(tmp_path):
    _, gpt_cfg = _tiny_configs()
    sd = load_file(str(CASE / "gpt.safetensors"))
    bad = dict(sd)
    del bad["norm.weight"]
    bad["layers.9.attention.wo.weight"] = torch.zeros(1)
    bad["output.weight"] = torch.zeros(3, 64)
    with pytest.raises(CheckpointError) as e:
        build_module("llamagen", gpt_cfg, bad, "bad.pt")
    msg = str(e.value)
    assert "norm.weight" in msg and "layers.9.attention.wo.weight" in msg and "output.weight: file (3, 64)" in msg

    path = tmp_path / "train.pt"
    torch.save({"model": sd, "args": argparse.Namespace(lr=1e-4)}, path)
    with pytest.raises(CheckpointError, match="refused to unpickle"):
        load_module_file("llamagen", gpt_cfg, path)
    (tmp_path / "broken.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError):
        load_module_file("llamagen", gpt_cfg, tmp_path / "broken.pt")
    with pytest.raises(ArnodesError, match="not found"):
        load_module_file("llamagen", gpt_cfg, tmp_path / "missing.pt")


def test_config_validation():
    with pytest.raises(InvalidInputError, match="square"):
        LlamaGenConfig(dim=64, n_head=2, n_layer=1, block_size=15)
    with pytest.raises(ArnodesError, match="i2i"):
        LlamaGenConfig(model_type="i2i")
    with pytest.raises(InvalidInputError, match="n_kv_head"):
        LlamaGenConfig(dim=64, n_head=4, n_kv_head=3, n_layer=1)


def test_vq_bad_inputs_raise_clear_errors():
    vq_cfg, _ = _tiny_configs()
    vq = VQTokenizer(vq_cfg).eval()
    for img, match in [(torch.zeros(1, 4, 64, 64), "channels"), (torch.zeros(3, 64, 64), r"\[B, 3, H, W\]"),
                       (torch.zeros(1, 3, 64, 40), "multiples of .* 16"),
                       (torch.full((1, 3, 32, 32), float("nan")), "NaN")]:
        with pytest.raises(InvalidInputError, match=match):
            vq.encode_grids(img)
    with pytest.raises(InvalidInputError, match=r"\[0, 256\)"):
        vq.decode_grids([torch.full((1, 2, 2), 256)])
    with pytest.raises(InvalidInputError, match="one token grid"):
        vq.decode_grids([torch.zeros(1, 2, 2, dtype=torch.long)] * 2)
    img = vq.decode_grids(vq.encode_grids(torch.rand(1, 3, 32, 48) * 2 - 1))
    assert img.shape == (1, 3, 32, 48) and img.abs().max() <= 1
