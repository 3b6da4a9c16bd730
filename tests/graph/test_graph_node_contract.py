"""nodes/base.py: specs, widget value checks, the execution context's sandbox, progress and cancel."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from arnodes.engine.errors import CancelledError, InvalidInputError
from arnodes.nodes.base import (
    COMBO, FLOAT, IMAGE, INT, STRING, ExecutionContext, InputSpec, NodeSpec, OutputSpec, validate_widget_value,
)


def test_spec_checks_and_helpers():
    with pytest.raises(ValueError, match="duplicate input names"):
        NodeSpec("X", "X", "t", (InputSpec("a", INT), InputSpec("a", INT)))
    with pytest.raises(ValueError, match="min 5 > max 1"):
        InputSpec("a", INT, min=5, max=1)
    with pytest.raises(ValueError, match="identifier"):
        InputSpec("bad name", INT)
    spec = NodeSpec("X", "Ex", "t", [InputSpec("img", IMAGE), InputSpec("n", INT, default=1, min=0)],
                    [OutputSpec("out", IMAGE)])
    assert isinstance(spec.inputs, tuple) and [i.name for i in spec.widget_inputs] == ["n"]
    assert spec.input("img").required and not spec.input("n").required
    d = spec.to_dict()
    assert d["inputs"][1] == {"name": "n", "type": "INT", "default": 1, "optional": False, "min": 0}


def test_validate_widget_value():
    assert validate_widget_value(InputSpec("n", INT, min=0, max=9), 3) is None
    assert "below the minimum 0" in validate_widget_value(InputSpec("n", INT, min=0), -1)
    assert "expects an integer" in validate_widget_value(InputSpec("n", INT), True)
    assert validate_widget_value(InputSpec("f", FLOAT), 2) is None
    assert "finite" in validate_widget_value(InputSpec("f", FLOAT), float("nan"))
    assert "expects a string" in validate_widget_value(InputSpec("s", STRING), 1)
    assert validate_widget_value(InputSpec("c", COMBO), "anything.png") is None  # node validates itself
    names = ["a", "b"]
    dynamic = InputSpec("c", COMBO, choices=lambda: names)
    assert validate_widget_value(dynamic, "a") is None
    names.remove("a")
    assert "not one of the allowed values: 'b'" in validate_widget_value(dynamic, "a")

    def broken():
        raise OSError("models dir unreadable")

    assert "models dir unreadable" in validate_widget_value(InputSpec("c", COMBO, choices=broken), "a")


def test_context_progress_and_cancel(tmp_path):
    seen = []
    cancel = threading.Event()
    ctx = ExecutionContext("5", "Gen", tmp_path, tmp_path, on_progress=lambda s, t: seen.append((s, t)),
                           cancel=cancel)
    ctx.progress(1, 4)
    cancel.set()
    with pytest.raises(CancelledError, match=r"node 5 \(Gen\)"):
        ctx.progress(2, 4)
    assert seen == [(1, 4), (2, 4)]


def test_context_sandbox(tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    inp.mkdir()
    (tmp_path / "secret.png").write_bytes(b"x")
    ctx = ExecutionContext("1", "LoadImage", inp, out)
    assert ctx.input_path("sub/a.png") == (inp / "sub" / "a.png").resolve()
    for bad in ["/etc/passwd", "../secret.png", "a/../../secret.png", ""]:
        with pytest.raises(InvalidInputError):
            ctx.input_path(bad)
    if hasattr(os, "symlink"):
        (inp / "link.png").symlink_to(tmp_path / "secret.png")
        with pytest.raises(InvalidInputError, match="outside the input directory"):
            ctx.input_path("link.png")
    assert ctx.output_path("run/x.png").parent.is_dir()


def test_importing_graph_does_not_import_torch():
    code = ("import sys, arnodes.graph, arnodes.graph.executor, arnodes.graph.workflow; "
            "bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')); "
            "print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=str(Path(__file__).resolve().parents[2].parent))
    assert proc.returncode == 0, proc.stdout + proc.stderr
