"""arnodes: a node-based backend for autoregressive image generation (VAR, LlamaGen).

This file is both the package root and a ComfyUI custom-node entry point, so it
must stay light: importing it loads no model and creates no GPU context, and
imports no torch (`import arnodes.graph` stays torch-free). ComfyUI's
NODE_CLASS_MAPPINGS / NODE_DISPLAY_NAME_MAPPINGS are built on first access
(PEP 562) from nodes/comfy_pack.py.
"""
from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_COMFY_NAMES = ("NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS")


def __getattr__(name: str) -> Any:
    if name in _COMFY_NAMES:
        from .nodes import comfy_pack

        value = getattr(comfy_pack, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_COMFY_NAMES])
