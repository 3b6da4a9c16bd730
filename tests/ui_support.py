"""Shared helpers of the web-app tests (tests/ui/): a weight-free mock runner, the model to test
against, and a local server running in a background thread.

The mock follows hysts/gradio-sam-prompter's `_mock_inference` idea: the app is built and
clicked through without any weights; it records the workflows it was asked to run.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from PIL import Image

TESTS_DIR = Path(__file__).resolve().parent
TINY_VAR = TESTS_DIR / "fixtures" / "reference" / "var" / "tiny_a"
TINY_CLASSES = ["red heart", "grinning face", "cat face", "sun", "star", "fire", "rainbow", "snowflake",
                "four leaf clover", "crescent moon"]


class MockRunner:
    """Stands in for WorkflowRunner: returns one fixed 64x64 image per run, records each workflow."""

    def __init__(self, workdir: Path) -> None:
        from arnodes.ui.callbacks import WorkflowRunner

        self._real = WorkflowRunner(workdir)  # sandboxed folders and metadata only; never runs a graph
        self.input_dir, self.output_dir = self._real.input_dir, self._real.output_dir
        self.workflows: list[dict] = []

    @property
    def registry(self):
        """The real node registry (no weights are read): workflow uploads validate as in the app."""
        return self._real.registry

    def run(self, workflow: dict, on_event=None, cancel=None, extra_pnginfo=None, ui_out=None):
        self.workflows.append(workflow)
        image = Image.new("RGB", (64, 64), (220, 40, 60))
        path = self.output_dir / f"mock_{len(self.workflows):05}_.png"
        image.save(path)
        return [path]

    def save_input(self, image: Image.Image, prefix: str = "upload") -> str:
        return self._real.save_input(image, prefix)

    def add_input_file(self, path) -> str:
        return self._real.add_input_file(path)

    def models(self) -> list[dict]:
        return [{"name": "mock-model", "family": "var", "source": "bundled", "present": True, "loaded": "",
                 "memory_mb": 0.0}]

    def model_choices(self) -> list[str]:
        return ["mock-model"]

    def default_model(self) -> str:
        return "mock-model"

    def class_choices(self, model: str | None) -> list[tuple[str, str]]:
        return [(f"❤️ {n}" if n == "red heart" else n, n) for n in TINY_CLASSES]

    def style_choices(self) -> list[str]:
        return ["any"]

    text_models: tuple[str, ...] = ()  # model names the mock calls text-to-image

    def takes_prompt(self, model: str | None) -> bool:
        return model in self.text_models

    def loaded(self) -> list[dict]:
        return []

    def unload(self, name: str | None = None) -> int:
        return 0


def write_tiny_models_dir(root: Path) -> Path:
    """A models directory holding `tiny-var.json`: the VAR parity fixture as a 10-class, 64px bundle."""
    import sys
    sys.path.insert(0, str(TESTS_DIR))
    from parity_var import msvq_config, var_config  # noqa: E402  (tests/ helper module)

    root.mkdir(parents=True, exist_ok=True)
    cfg = json.loads((TINY_VAR / "config.json").read_text())
    for name in ("vae.safetensors", "var.safetensors"):
        shutil.copyfile(TINY_VAR / name, root / name)
    (root / "tiny_classes.json").write_text(json.dumps(TINY_CLASSES))
    manifest = {
        "name": "tiny-var", "family": "var", "image_size": int(cfg["image_size"]),
        "tokenizer": {"kind": "msvq", "file": "vae.safetensors", "config": dataclasses.asdict(msvq_config(cfg))},
        "generator": {"kind": "var", "file": "var.safetensors", "config": dataclasses.asdict(var_config(cfg))},
        "classes": "tiny_classes.json", "defaults": {},
    }
    (root / "tiny-var.json").write_text(json.dumps(manifest, indent=1))
    return root


def pick_model(tmp_root: Path, monkeypatch: Any) -> tuple[str, str, int]:
    """(model name, a class name, image size): the bundled model when its weights exist, else the tiny one."""
    from arnodes.engine.registry import DEFAULT_MODEL, bundled_model_names

    if DEFAULT_MODEL in bundled_model_names():
        return DEFAULT_MODEL, "red heart", 64
    monkeypatch.setenv("ARNODES_MODELS_DIR", str(write_tiny_models_dir(tmp_root / "models")))
    return "tiny-var.json", "red heart", 64


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serving(demo: Any) -> Iterator[str]:
    """Launch `demo` on 127.0.0.1 at a free port without blocking; yields its URL, closes it after."""
    from arnodes.ui.app import serve

    port = free_port()
    serve(demo, host="127.0.0.1", port=port, block=False)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()


def sample_image(path: Path, size: int = 64) -> Path:
    """A small colourful test picture (not blank) saved as PNG."""
    img = Image.new("RGB", (size, size), (250, 240, 200))
    for y in range(size):
        for x in range(size):
            if (x - size / 2) ** 2 + (y - size / 2) ** 2 < (size / 3) ** 2:
                img.putpixel((x, y), (200, 30 + x * 2, 40 + y))
    img.save(path)
    return path


def stroke_layer(path: Path, size: int = 64, box: tuple[int, int, int, int] = (16, 16, 48, 48)) -> Path:
    """An RGBA layer with a painted square, as the ImageEditor sends a brush stroke."""
    layer = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    x0, y0, x1, y1 = box
    for y in range(y0, y1):
        for x in range(x0, x1):
            layer.putpixel((x, y), (255, 255, 255, 255))
    layer.save(path)
    return path
