"""Checkpoints from strangers: no pickled code ever runs, legacy files still load, broken files are
refused at load with a short message that names the file and the tensor."""
from __future__ import annotations

import os
import pickle
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from arnodes.engine.errors import CheckpointError
from arnodes.engine.loader import load_module_file
from arnodes.engine.models.var import VAR, VARConfig

TINY = VARConfig(num_classes=4, depth=2, embed_dim=64, num_heads=2, patch_nums=(1, 2, 3), vocab_size=32, cvae=4)


def tiny_sd() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {k: v.contiguous() for k, v in VAR(TINY).eval().state_dict().items()}


class Payload:
    """Unpickling this opens (creates) the marker file: a real code-execution payload, harmless in tmp."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def write_malicious(path, marker, form: str) -> None:
    obj = {"model": tiny_sd(), "hook": Payload(str(marker))}
    if form == "zip":
        torch.save(obj, path)
    elif form == "legacy":
        torch.save(obj, path, _use_new_zipfile_serialization=False)
    else:
        with open(path, "wb") as fh:
            pickle.dump(obj, fh)


@pytest.mark.parametrize("form", ["zip", "legacy", "raw"])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, form):
    marker = tmp_path / "pwned"
    path = tmp_path / f"evil_{form}.pth"
    write_malicious(path, marker, form)
    # the payload is real: plain unpickling (in a child process) creates the marker
    loader = "torch.load(p, weights_only=False)" if form != "raw" else "pickle.load(open(p, 'rb'))"
    subprocess.run([sys.executable, "-c", f"import pickle, torch; p = {str(path)!r}; {loader}"], check=True,
                   cwd=os.path.dirname(__file__) + "/../..", capture_output=True)
    assert marker.exists(), "the payload did not run under plain unpickling: the test proves nothing"
    marker.unlink()
    with pytest.raises(CheckpointError) as e:
        load_module_file("var", TINY, path)
    assert str(path) in str(e.value) and ("refused" in str(e.value) or "unreadable" in str(e.value))
    assert not marker.exists(), "pickled code ran while loading a checkpoint"


def test_harmless_legacy_checkpoint_loads_without_mmap(tmp_path):
    sd = tiny_sd()
    path = tmp_path / "old.pth"
    torch.save({"model": sd}, path, _use_new_zipfile_serialization=False)
    loaded = load_module_file("var", TINY, path)
    for k, v in sd.items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_half_precision_weights_are_converted_to_the_model_dtype(tmp_path):
    sd = {k: v.half() if v.is_floating_point() else v for k, v in tiny_sd().items()}
    path = tmp_path / "half.safetensors"
    save_file(sd, str(path))
    loaded = load_module_file("var", TINY, path)
    assert loaded.head.weight.dtype == torch.float32
    assert torch.equal(loaded.head.weight, sd["head.weight"].float())


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_float_weights_stored_as_int64_are_refused_briefly(tmp_path, suffix):
    sd = {k: (v * 100).long() if v.is_floating_point() else v for k, v in tiny_sd().items()}
    path = tmp_path / f"ints{suffix}"
    save_file(sd, str(path)) if suffix == ".safetensors" else torch.save(sd, path)
    with pytest.raises(CheckpointError) as e:
        load_module_file("var", TINY, path)
    msg = str(e.value)
    assert str(path) in msg and "wrong dtypes" in msg and "file int64 vs model float32" in msg
    assert "head.weight" in msg or "... and" in msg
    assert len(msg) < 1000, f"{len(msg)} characters"


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_weights_are_refused_at_load(tmp_path, bad):
    sd = tiny_sd()
    sd["head.weight"][3, 5] = bad
    path = tmp_path / "nan.safetensors"
    save_file(sd, str(path))
    with pytest.raises(CheckpointError) as e:
        load_module_file("var", TINY, path)
    assert "NaN or infinite values in (1): head.weight" in str(e.value) and str(path) in str(e.value)


def test_empty_file_directory_and_pipe_are_refused_by_name(tmp_path):
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty.safetensors: the file is empty"):
        load_module_file("var", TINY, empty)
    folder = tmp_path / "folder.pth"
    folder.mkdir()
    with pytest.raises(CheckpointError, match="folder.pth: is a directory"):
        load_module_file("var", TINY, folder)
    fifo = tmp_path / "pipe.pth"
    os.mkfifo(fifo)
    with pytest.raises(CheckpointError, match="pipe.pth: not a regular file"):
        load_module_file("var", TINY, fifo)  # must not block reading the pipe


def test_safetensors_truncated_in_the_header_or_lying_about_its_size(tmp_path):
    full = tmp_path / "full.safetensors"
    save_file(tiny_sd(), str(full))
    data = full.read_bytes()
    for name, blob in (("header.safetensors", data[:20]), ("huge.safetensors", (2 ** 40).to_bytes(8, "little") + b"{}"),
                       ("tail.safetensors", data[:-7])):
        path = tmp_path / name
        path.write_bytes(blob)
        with pytest.raises(CheckpointError) as e:
            load_module_file("var", TINY, path)
        assert str(path) in str(e.value) and "not a readable safetensors file" in str(e.value)
