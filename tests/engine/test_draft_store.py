"""A manifest's draft store: loaded onto the bundle and used by default for speculative drafts; a bad
store file is a checkpoint error naming the problem."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import save_file

from arnodes.engine.errors import CheckpointError, MissingFileError
from arnodes.engine.loader import load_manifest


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(folder, manifest dict, generator config) of the tiny LlamaGen fixture, copied so entries can be added."""
    from test_workflows import TINY_LLAMAGEN, tiny_models_dir
    src = tiny_models_dir()
    out = tmp_path_factory.mktemp("tiny_store")
    shutil.copy(src / "classes.json", out / "classes.json")
    manifest = json.loads((src / TINY_LLAMAGEN).read_text())
    return out, manifest, load_manifest(src / TINY_LLAMAGEN).generator.config


def _with_store(tiny, name: str, tensors: dict | None, entry: dict | None = None):
    out, manifest, _ = tiny
    if tensors is not None:
        save_file(tensors, str(out / f"{name}.safetensors"))
    data = dict(manifest, draft_store=entry or {"file": f"{name}.safetensors"})
    path = out / f"{name}.json"
    path.write_text(json.dumps(data))
    return load_manifest(path)


def test_a_store_loads_and_drafts_by_default(tiny):
    from arnodes.engine.conditioning import Conditioning
    from arnodes.engine.generate import DecodeOptions, generate
    from arnodes.engine.sampling import SamplingParams
    _, _, cfg = tiny
    greedy = SamplingParams(top_k=1, top_p_style="llamagen")
    plain_bundle = _with_store(tiny, "probe", {"tokens": torch.zeros(1, cfg.block_size, dtype=torch.int16)})
    plain = generate(plain_bundle, Conditioning((1,), cfg=1.0), params=greedy, seed=0)
    grid = plain.grids[0].reshape(1, -1).to(torch.int16)
    bundle = _with_store(tiny, "good", {"tokens": grid, "labels": torch.tensor([1], dtype=torch.int32)})
    assert torch.equal(bundle.draft_store.tokens, grid.long()) and bundle.draft_store.labels.tolist() == [1]
    forwards = {}
    for init in ("auto", "above"):
        stats: dict = {}
        out = generate(bundle, Conditioning((1,), cfg=1.0), params=greedy, seed=0,
                       decode=DecodeOptions("sjd", window=4, init=init), stats=stats)
        assert torch.equal(out.grids[0], plain.grids[0])
        forwards[init] = stats["forwards"]
    L = cfg.block_size
    assert forwards["auto"] == 1 + -(-(L - 1) // 4) < forwards["above"], forwards


@pytest.mark.parametrize("tensors,needle", [
    ({"tokens": torch.zeros(2, 3, dtype=torch.int16)}, "'tokens' must be"),
    ({"grids": torch.zeros(2, 16, dtype=torch.int16)}, "'tokens' must be"),
    ({"tokens": torch.zeros(2, 16)}, "integer ids"),
    ({"tokens": torch.zeros(2, 16, dtype=torch.bool)}, "integer ids"),
    ({"tokens": torch.full((2, 16), 2 ** 63 + 5, dtype=torch.uint64)}, "integer ids"),
    ({"tokens": torch.full((2, 16), 10 ** 6, dtype=torch.int32)}, "integer ids"),
    ({"tokens": torch.zeros(2, 16, dtype=torch.int16), "labels": torch.zeros(3, dtype=torch.int32)}, "'labels'"),
    ({"tokens": torch.zeros(2, 16, dtype=torch.int16), "labels": torch.full((2,), 9999, dtype=torch.int32)},
     "class ids of the generator"),
])
def test_bad_store_files_are_checkpoint_errors(tiny, tensors, needle):
    _, _, cfg = tiny
    if "tokens" in tensors and tensors["tokens"].shape[1] == 16:
        tensors = {k: (v[:, :1].expand(-1, cfg.block_size).contiguous() if k == "tokens" else v)
                   for k, v in tensors.items()}
    with pytest.raises(CheckpointError, match=needle):
        _with_store(tiny, "bad", tensors)


def test_unsigned_token_ids_load(tiny):
    _, _, cfg = tiny
    bundle = _with_store(tiny, "unsigned", {"tokens": torch.ones(3, cfg.block_size, dtype=torch.uint16),
                                            "labels": torch.tensor([0, 1, 2], dtype=torch.uint8)})
    assert bundle.draft_store.tokens.dtype == torch.int32 and bundle.draft_store.labels.tolist() == [0, 1, 2]


def test_a_store_on_a_next_scale_model_is_refused(tmp_path):
    from test_workflows import TINY_VAR, tiny_models_dir
    src = tiny_models_dir()
    shutil.copy(src / "classes.json", tmp_path / "classes.json")
    data = dict(json.loads((src / TINY_VAR).read_text()), draft_store={"file": "grids.safetensors"})
    (tmp_path / "var.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="raster"):
        load_manifest(tmp_path / "var.json")


def test_bad_store_entries(tiny):
    with pytest.raises(MissingFileError, match="not found"):
        _with_store(tiny, "absent", None)
    with pytest.raises(CheckpointError, match="must be an object"):
        _with_store(tiny, "entry", None, entry="grids.safetensors")
    with pytest.raises(CheckpointError, match=r"\.safetensors"):
        _with_store(tiny, "pickle", None, entry={"file": "grids.pt"})
