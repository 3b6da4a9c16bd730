"""The DINOv2 control encoder (ControlAR's text-to-image adapters) plugs into the ControlAR branch:
same tokens as transformers' Dinov2Model fed the official way, released 4.x keys load strictly,
and a missing transformers is one clear error."""
from __future__ import annotations

import builtins

import pytest
import torch
import torch.nn.functional as F

from arnodes.engine.control import adapter_config, build_adapter
from arnodes.engine.control.controlar import ControlARAdapter, ControlARConfig
from arnodes.engine.control.dinov2 import _RENAMED, DINOv2Config, DINOv2Encoder
from arnodes.engine.errors import UnsupportedError

ENC = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "image_size": 56}


def tiny_adapter(resize: str = "nearest") -> ControlARAdapter:
    torch.manual_seed(0)
    cfg = adapter_config("controlar", {"dim": 48, "n_layer": 3, "block_size": 16, "encoder": "dinov2",
                                       "encoder_config": {**ENC, "resize": resize}})
    adapter = ControlARAdapter(cfg).eval()
    with torch.no_grad():
        for p in adapter.parameters():
            p.normal_(0, 0.2)
    return adapter


def official_tokens(encoder: DINOv2Encoder, x: torch.Tensor, resize: str) -> torch.Tensor:
    """The official Dinov2_Adapter: resize to 14 px per 16, transformers' model, drop the CLS token."""
    import transformers

    ref = transformers.Dinov2Model(transformers.Dinov2Config(**{k: v for k, v in ENC.items()}, patch_size=14))
    ref.load_state_dict(encoder.state_dict())
    h, w = x.shape[-2:]
    size = (h // 16 * 14, w // 16 * 14)
    x = F.interpolate(x, size=size, mode="nearest") if resize == "nearest" else \
        F.interpolate(x, size=size, mode="bicubic", align_corners=True)
    return ref.eval()(x).last_hidden_state[:, 1:]


@pytest.mark.parametrize("resize", ["nearest", "bicubic"])
def test_dinov2_tokens_are_the_official_ones_and_reach_the_injected_blocks(resize):
    adapter = tiny_adapter(resize)
    assert isinstance(adapter.adapter.model, DINOv2Encoder) and adapter.map_size() == 4 * 16
    control = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        tokens = adapter.adapter.model(control)
        assert tokens.shape == (2, 16, 32)
        torch.testing.assert_close(tokens, official_tokens(adapter.adapter.model, control, resize))
        signal = adapter(control)
    assert sorted(signal.per_block) == [0, 1, 2] and signal.per_block[0].shape == (2, 16, 48)


def test_released_transformers4_keys_load_strictly():
    adapter = tiny_adapter()
    new_to_old = {new: old for old, new in _RENAMED.items()}
    released = {}
    for key, value in adapter.state_dict().items():
        for new, old in new_to_old.items():
            key = key.replace(new, old)
        released[key] = value
    assert "adapter.model.encoder.layer.0.attention.attention.query.weight" in released
    assert "adapter.model.embeddings.patch_embeddings.projection.weight" in released  # no extra nesting
    loaded = build_adapter("controlar", adapter.cfg, released, "released-layout test")
    control = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(loaded.condition_tokens(control), adapter.condition_tokens(control))


def test_without_transformers_the_error_says_how_to_get_it(monkeypatch):
    real_import = builtins.__import__

    def no_transformers(name, *args, **kwargs):
        if name == "transformers" or name.startswith("transformers."):
            raise ImportError("No module named 'transformers'")
        return real_import(name, *args, **kwargs)
    monkeypatch.setattr(builtins, "__import__", no_transformers)
    with pytest.raises(UnsupportedError, match="pip install transformers"):
        DINOv2Encoder(DINOv2Config(**ENC))
    cfg = ControlARConfig(dim=48, n_layer=3, block_size=16)  # the ViT encoder needs nothing extra
    assert ControlARAdapter(cfg).map_size() == 4 * 16
