"""The default node registry: the one place in graph/ that imports the node modules.

Imported lazily by callers (CLI, UI, tests) so that `import arnodes.graph` stays torch-free.
"""
from __future__ import annotations

from typing import Mapping


def default_registry() -> Mapping[str, type]:
    """class_type -> Node class for every node arnodes ships (AR* nodes and the ComfyUI core ones)."""
    from .. import nodes

    return nodes.REGISTRY
