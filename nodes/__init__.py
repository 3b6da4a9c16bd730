"""Graph nodes: thin, declarative adapters over the engine (the only layer touching PIL and files).

`REGISTRY` (class_type -> Node class) is built on first access (PEP 562), so that
importing `nodes.base` alone, as the torch-free graph layer does, loads no torch.
"""
from __future__ import annotations

import importlib
from typing import Any

#: Modules whose Node subclasses make up the registry, in display order.
NODE_MODULES = ("loaders", "conditioning", "tokenize", "generate", "inpaint", "edit", "super_resolve", "preprocess",
                "control", "masks", "io_image")

_registry: dict[str, type] | None = None


def _collect() -> dict[str, type]:
    from .base import Node

    found: dict[str, type] = {}
    for name in NODE_MODULES:
        module = importlib.import_module(f".{name}", __name__)
        for obj in vars(module).values():
            if (isinstance(obj, type) and issubclass(obj, Node) and obj is not Node and obj.__module__ == module.__name__
                    and hasattr(obj, "SPEC")):
                class_type = obj.SPEC.class_type
                if class_type in found:
                    raise RuntimeError(f"node class_type {class_type!r} is defined twice "
                                       f"({found[class_type].__module__} and {module.__name__})")
                found[class_type] = obj
    return found


def __getattr__(name: str) -> Any:
    global _registry
    if name == "REGISTRY":
        if _registry is None:
            _registry = _collect()
        return _registry
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
