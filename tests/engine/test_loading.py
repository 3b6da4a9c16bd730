"""Loading VAR checkpoints: the released layouts at full size (on meta), file formats, and clear errors."""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from arnodes.engine.checkpoint import build_on_meta
from arnodes.engine.errors import CheckpointError, MissingFileError, UnknownNameError
from arnodes.engine.loader import build_module, load_bundle, load_module_file, preset_config
from arnodes.engine.models.var import PRESETS as VAR_PRESETS
from arnodes.engine.models.var import VAR, VARConfig
from arnodes.engine.registry import REGISTRY, get_entry
from arnodes.engine.resolve import resolve_file
from arnodes.engine.tokenizers.msvq import PRESETS as VAE_PRESETS
from arnodes.engine.tokenizers.msvq import MSVQTokenizer

LAYOUTS = json.loads((Path(__file__).resolve().parents[1] / "fixtures" / "reference" / "var"
                      / "real_checkpoint_layouts.json").read_text())
# parameter counts (millions, buffers excluded) from the fixture README / the official release notes
PARAMS_M = {"var_d16.pth": 310.3, "var_d20.pth": 600.9, "var_d24.pth": 1033.4, "var_d30.pth": 2010.0,
            "var_d36.pth": 2353.9, "vae_ch160v4096z32.pth": 108.95}
TINY = VARConfig(num_classes=4, depth=2, embed_dim=64, num_heads=2, patch_nums=(1, 2, 3), vocab_size=32, cvae=4)


def shapes(model: torch.nn.Module) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("depth", [16, 20, 24, 30, 36])
def test_released_var_configs_match_official_layout(depth):
    name = f"var_d{depth}.pth"
    cfg = preset_config("var", f"var-d{depth}")
    assert cfg == VAR_PRESETS[f"var-d{depth}"]
    assert cfg.shared_aln == (depth == 36) and cfg.embed_dim == 64 * depth and cfg.num_heads == depth
    model = build_on_meta(lambda: VAR(cfg))
    got = shapes(model)
    assert got == LAYOUTS[name]
    assert list(got) == list(LAYOUTS[name]), "state_dict order differs from the official one"
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 1) == PARAMS_M[name]
    entry = get_entry(f"var-d{depth}")
    assert entry.generator_file == name and entry.image_size == (512 if depth == 36 else 256)
    assert entry.image_size == preset_config("msvq", entry.tokenizer_preset).image_size


def test_released_vae_config_matches_official_layout():
    name = "vae_ch160v4096z32.pth"
    for preset in VAE_PRESETS:  # the 512px variant only changes patch_nums, not the file
        model = build_on_meta(lambda: MSVQTokenizer(VAE_PRESETS[preset]))
        assert shapes(model) == LAYOUTS[name]  # same keys and shapes (state_dict order is not the official one)
        assert round(sum(p.numel() for p in model.parameters()) / 1e6, 2) == PARAMS_M[name]


def test_full_size_d16_state_dict_loads_strictly():
    """Materialise d16 once (1.2 GB float32 zeros: finite, which the loader checks) with the official keys and shapes."""
    sd = {k: torch.zeros(shape, dtype=torch.int64 if k == "lvl_1L" else torch.float32)
          for k, shape in LAYOUTS["var_d16.pth"].items()}
    model = build_module("var", VAR_PRESETS["var-d16"], sd, "var_d16.pth")
    assert model.blocks[15].attn.mat_qkv.weight.data_ptr() == sd["blocks.15.attn.mat_qkv.weight"].data_ptr()
    assert model.lvl_1L[0, -1].item() == 9 and model.attn_bias_for_masking[0, 0, 0, 1].item() == float("-inf")
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    del sd, model


def test_a_consumed_state_dict_lets_a_cast_free_each_float32_tensor():
    """Loading in bfloat16 from a float32 file: once the dict is consumed, the model holds the only
    references, so its float32 tensors are gone when the model is bfloat16 (not kept beside it)."""
    import weakref

    sd = {k: v.clone() for k, v in tiny_var().state_dict().items()}
    kept = {k: v.clone() for k, v in sd.items()}
    refs = [weakref.ref(v) for v in kept.values() if v.dtype == torch.float32]
    model = build_module("var", TINY, kept, "tiny.safetensors", dtype=torch.bfloat16, consume=True)
    assert kept == {} and refs and all(r() is None for r in refs)
    assert model.blocks[0].attn.mat_qkv.weight.dtype == torch.bfloat16
    torch.testing.assert_close(model.blocks[0].attn.mat_qkv.weight.float(),
                               sd["blocks.0.attn.mat_qkv.weight"].bfloat16().float())
    plain = {k: v.clone() for k, v in sd.items()}
    build_module("var", TINY, plain, "tiny.safetensors", dtype=torch.bfloat16)
    assert plain.keys() == sd.keys()  # without consume the caller's dict is left alone


def test_a_half_precision_model_reaches_its_device_already_cast(monkeypatch):
    """Moving float32 weights to a GPU and casting there would need the float32 size of device memory to
    load a bfloat16 model (8 GB instead of 4 for VAR-d30): the cast happens first, on the host."""
    seen = []
    real_to = torch.nn.Module.to

    def spy(self, *args, **kwargs):
        if "device" in kwargs and isinstance(self, VAR):
            seen.append(self.blocks[0].attn.mat_qkv.weight.dtype)
        return real_to(self, *args, **kwargs)
    monkeypatch.setattr(torch.nn.Module, "to", spy)
    sd = {k: v.clone() for k, v in tiny_var().state_dict().items()}
    model = build_module("var", TINY, sd, "tiny.safetensors", device="cpu", dtype=torch.bfloat16, consume=True)
    assert seen == [torch.bfloat16] and model.blocks[0].attn.mat_qkv.weight.dtype == torch.bfloat16


def tiny_var() -> VAR:
    torch.manual_seed(0)
    return VAR(TINY).eval()


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_tiny_state_dict_round_trips_through_files(tmp_path, suffix):
    model = tiny_var()
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    path = tmp_path / f"tiny{suffix}"
    if suffix == ".safetensors":
        save_file(sd, str(path))
    else:
        torch.save({"model": sd}, path)  # training checkpoints nest the weights
    loaded = load_module_file("var", TINY, path)
    for k, v in sd.items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_pickle_with_python_objects_is_refused(tmp_path):
    path = tmp_path / "with_args.pth"
    torch.save({"model": tiny_var().state_dict(), "args": argparse.Namespace(depth=2)}, path)
    with pytest.raises(CheckpointError, match="weights_only") as e:
        load_module_file("var", TINY, path)
    assert "refused" in str(e.value) and str(path) in str(e.value)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_truncated_or_garbage_file_is_a_checkpoint_error(tmp_path, suffix):
    full = tmp_path / f"full{suffix}"
    sd = {k: v.contiguous() for k, v in tiny_var().state_dict().items()}
    save_file(sd, str(full)) if suffix == ".safetensors" else torch.save(sd, full)
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    garbage = tmp_path / f"garbage{suffix}"
    garbage.write_bytes(b"\x00not a checkpoint" * 10)
    for p in (cut, garbage):
        with pytest.raises(CheckpointError) as e:
            load_module_file("var", TINY, p)
        assert str(p) in str(e.value)


def test_unknown_suffix_and_missing_file(tmp_path):
    odd = tmp_path / "weights.npz"
    odd.write_bytes(b"x")
    with pytest.raises(CheckpointError, match="unknown checkpoint format"):
        load_module_file("var", TINY, odd)
    with pytest.raises(MissingFileError):
        load_module_file("var", TINY, tmp_path / "absent.safetensors")


def test_mismatched_state_dict_lists_every_problem():
    sd = dict(tiny_var().state_dict())
    del sd["head.bias"]
    sd["blocks.0.attn.extra_thing"] = torch.zeros(3)
    sd["word_embed.weight"] = torch.zeros(64, 5)
    with pytest.raises(CheckpointError) as e:
        build_module("var", TINY, sd, "broken.pth")
    msg = str(e.value)
    for needle in ("broken.pth", "missing keys (1): head.bias", "unexpected keys (1): blocks.0.attn.extra_thing",
                   "wrong shapes (1): word_embed.weight"):
        assert needle in msg, msg


def test_optional_buffers_may_be_absent():
    sd = {k: v for k, v in tiny_var().state_dict().items()
          if k not in ("lvl_1L", "attn_bias_for_masking") and not k.endswith("zero_k_bias")}
    model = build_module("var", TINY, sd, "no_buffers.safetensors")
    assert model.lvl_1L.shape == (1, TINY.tokens_per_image)


def test_unknown_model_name_lists_available():
    with pytest.raises(UnknownNameError) as e:
        get_entry("var-d17")
    assert "var-d17" in str(e.value) and "var-d16" in str(e.value) and "var-d36" in str(e.value)
    with pytest.raises(UnknownNameError, match="available"):
        load_bundle("var-d17")
    assert {f"var-d{d}" for d in (16, 20, 24, 30, 36)} <= set(REGISTRY)


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf_home" / "hub"))
    models = tmp_path / "models"
    models.mkdir()
    return models


def test_missing_file_error_says_what_where_and_how(offline_hub):
    with pytest.raises(MissingFileError) as e:
        resolve_file("var_d16.pth", "FoundationVision/var", offline_hub)
    msg = str(e.value)
    assert "var_d16.pth" in msg and str(offline_hub) in msg
    assert "huggingface.co/FoundationVision/var" in msg and "ARNODES_MODELS_DIR" in msg and "HF_HUB_OFFLINE" in msg
    assert "--models-dir" not in msg  # a CLI flag: the CLI adds it; the app and ComfyUI have none
    with pytest.raises(MissingFileError, match="vae_ch160v4096z32.pth"):
        load_bundle("var-d16", models_dir=offline_hub)


def test_resolve_file_finds_models_dir_first(offline_hub):
    target = offline_hub / "var_d16.pth"
    target.write_bytes(b"placeholder")
    assert resolve_file("var_d16.pth", "FoundationVision/var", offline_hub) == target
    assert resolve_file("var_d16.pth", None, offline_hub) == target
    with pytest.raises(MissingFileError, match="put it in"):
        resolve_file("var_d20.pth", None, offline_hub)


def test_registry_bundle_loads_from_models_dir(offline_hub, monkeypatch):
    """A registry name resolves both files in --models-dir; tiny presets stand in for the full-size ones."""
    import arnodes.engine.loader as loader
    from arnodes.engine.tokenizers.msvq import MSVQConfig
    tok_cfg = MSVQConfig(vocab_size=32, z_channels=4, ch=32, ch_mult=(1, 1), num_res_blocks=1, patch_nums=(1, 2, 3),
                         using_sa=False, using_mid_sa=False)
    var_cfg = dataclasses.replace(TINY, num_classes=1000)
    torch.manual_seed(0)
    torch.save(MSVQTokenizer(tok_cfg).state_dict(), offline_hub / "vae_ch160v4096z32.pth")
    torch.save(VAR(var_cfg).state_dict(), offline_hub / "var_d16.pth")
    monkeypatch.setattr(loader, "preset_config", lambda kind, preset: tok_cfg if kind == "msvq" else var_cfg)
    bundle = load_bundle("var-d16", models_dir=offline_hub)
    assert bundle.family == "var" and bundle.name == "var-d16" and len(bundle.classes) == 1000
    assert bundle.generator.cfg == var_cfg and bundle.defaults["top_k"] == 900


def test_loading_a_bundled_model_leaves_torchs_compiler_stack_unimported():
    """Arithmetic or random fills on the meta device run torch's Python reference kernels, whose first use
    imports the compiler stack (sympy and ~800 modules: ~1 s and ~70 MB for the process) - once the whole
    load time of the bundled model. build_on_meta skips the fills; the constructors compute nothing on meta."""
    import subprocess
    import sys

    code = ("import sys\nfrom arnodes.engine.loader import load_bundle\n"
            "for name in ('emoji-var', 'emoji-raster'):\n    load_bundle(name)\n"
            "print(sorted(m for m in ('torch._dynamo', 'sympy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_meta_builds_still_initialise_models_built_for_real():
    """The skipped fills are only those of meta tensors: a model built on the CPU is randomly initialised."""
    torch.manual_seed(0)
    a = build_module("var", TINY, None, "random")
    torch.manual_seed(1)
    b = build_module("var", TINY, None, "random")
    assert not torch.equal(a.class_emb.weight, b.class_emb.weight) and a.class_emb.weight.abs().sum() > 0
    meta = build_on_meta(lambda: VAR(TINY))
    assert meta.class_emb.weight.is_meta and meta.blocks[0].attn.scale_mul_1H11.shape == (1, TINY.num_heads, 1, 1)
