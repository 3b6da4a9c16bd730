"""Output files under concurrency and replay: atomic name claims, nothing overwritten, nothing hidden,
modes that follow the umask, and six real `arnodes generate` processes into one folder."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from arnodes.cli import main
from arnodes.nodes import io_image
from arnodes.nodes.base import ExecutionContext
from arnodes.nodes.io_image import SaveImage

REPO = Path(__file__).resolve().parent.parent
HAS_BUNDLED = (REPO / "weights" / "emoji.json").is_file()


def ctx_for(out: Path) -> ExecutionContext:
    return ExecutionContext("9", "SaveImage", out, out, prompt={"9": {"class_type": "SaveImage"}})


def test_threads_saving_with_one_prefix_never_overwrite(tmp_path):
    images = [torch.full((1, 4, 4, 3), i / 40) for i in range(40)]
    names: list[list[str]] = [[] for _ in images]
    start = threading.Barrier(8)

    def worker(k: int) -> None:
        start.wait()
        for i in range(k, len(images), 8):
            names[i] = SaveImage.execute(ctx_for(tmp_path), images=images[i], filename_prefix="same").ui["images"]

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    flat = [n for group in names for n in group]
    assert len(flat) == len(set(flat)) == 40
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(flat), "stray or missing files"
    for i, group in enumerate(names):  # each file holds the image its caller saved
        assert np.asarray(Image.open(tmp_path / group[0]))[0, 0, 0] == int(255 * (i / 40))


def test_a_stale_counter_skips_taken_names(tmp_path, monkeypatch):
    ctx = ctx_for(tmp_path)
    first = SaveImage.execute(ctx, images=torch.zeros(1, 4, 4, 3), filename_prefix="p").ui["images"]
    monkeypatch.setattr(io_image, "_next_counter", lambda folder, base: 1)  # as if another process raced us
    second = SaveImage.execute(ctx, images=torch.ones(2, 4, 4, 3), filename_prefix="p").ui["images"]
    assert first == ["p_00001_.png"] and second == ["p_00002_.png", "p_00003_.png"]
    assert np.asarray(Image.open(tmp_path / "p_00001_.png")).max() == 0, "the first output was overwritten"


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_output_mode_follows_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        (name,) = SaveImage.execute(ctx_for(tmp_path), images=torch.zeros(1, 4, 4, 3), filename_prefix="m").ui["images"]
    finally:
        os.umask(old)
    assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask


@pytest.mark.skipif(not HAS_BUNDLED, reason="bundled model missing")
def test_replaying_an_out_png_writes_no_hidden_files(tmp_path, capsys):
    out = tmp_path / "heart.png"
    assert main(["generate", "--class", "red heart", "--device", "cpu", "--out", str(out), "--quiet"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["heart.png"], "staging folder left behind"
    capsys.readouterr()
    replay = tmp_path / "replay"
    assert main(["run", str(out), "--output-dir", str(replay), "--quiet"]) == 0
    assert [p.name for p in replay.iterdir()] == ["generate_00001_.png"]
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(replay / "generate_00001_.png")))


@pytest.mark.slow
@pytest.mark.skipif(not HAS_BUNDLED, reason="bundled model missing")
def test_six_concurrent_generate_processes_into_one_folder(tmp_path, capsys):
    shared = tmp_path / "shared"
    env = dict(os.environ)
    # the bundled model draws near-identical images of one class at its default sampling settings, so each
    # process also asks for its own class: six different images, any mix-up shows
    classes = ["red heart", "sun", "fire", "pizza", "cat face", "rainbow"]
    request = ["--device", "cpu", "--top-k", "0", "--top-p", "1", "--temperature", "1.2", "--quiet"]
    procs = [subprocess.Popen([sys.executable, "-m", "arnodes", "generate", "--class", classes[seed], "--seed",
                               str(seed), "--output-dir", str(shared), *request],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
             for seed in range(6)]
    printed = {}
    for seed, proc in enumerate(procs):
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr
        printed[seed] = Path(stdout.strip())
    files = sorted(shared.iterdir())
    assert len(files) == 6 and len(set(printed.values())) == 6, (files, printed)
    assert {p.resolve() for p in printed.values()} == {p.resolve() for p in files}
    for seed, path in printed.items():  # each file is the image of its own seed, as a run alone makes it
        alone = tmp_path / f"alone{seed}.png"
        assert main(["generate", "--class", classes[seed], "--seed", str(seed), "--out", str(alone), *request]) == 0
        diff = np.abs(np.asarray(Image.open(path)).astype(int) - np.asarray(Image.open(alone)).astype(int))
        assert diff.max() == 0, f"seed {seed}: {int((diff > 0).sum())} values differ, by up to {diff.max()}"
    pixels = {np.asarray(Image.open(p)).tobytes() for p in files}
    assert len(pixels) == 6
    capsys.readouterr()
