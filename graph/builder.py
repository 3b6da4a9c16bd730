"""GraphBuilder: write workflows in Python (CLI shortcuts, UI callbacks, tests).

    g = GraphBuilder()
    a = g.node("ClassA", x=1)
    b = g.node("ClassB", inp=a.out(0))
    g.build()  # {"1": {"class_type": "ClassA", "inputs": {"x": 1}}, "2": {...}}
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from .errors import WorkflowError
from .workflow import Workflow


@dataclass(frozen=True)
class NodeRef:
    """Handle to a node added to a GraphBuilder; `out(i)` is the link to its i-th output."""

    id: str
    class_type: str

    def out(self, index: int = 0) -> list:
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise WorkflowError(f"node {self.id} ({self.class_type}): output index must be an integer >= 0, "
                                f"got {index!r}")
        return [self.id, index]


class GraphBuilder:
    """Accumulates nodes with string ids "1", "2", ...; a NodeRef given as a value means its output 0."""

    def __init__(self) -> None:
        self._nodes: Workflow = {}

    def node(self, class_type: str, /, **inputs: Any) -> NodeRef:
        if not isinstance(class_type, str) or not class_type:
            raise WorkflowError(f"class_type must be a non-empty string, got {class_type!r}")
        ref = NodeRef(str(len(self._nodes) + 1), class_type)
        self._nodes[ref.id] = {"class_type": class_type, "inputs": {}}
        for name, value in inputs.items():
            self.set(ref, name, value)
        return ref

    def set(self, ref: NodeRef, name: str, value: Any) -> None:
        """Set or replace one input of an already added node."""
        if ref.id not in self._nodes:
            raise WorkflowError(f"node {ref.id} was not added to this builder")
        self._nodes[ref.id]["inputs"][name] = value.out(0) if isinstance(value, NodeRef) else value

    def build(self) -> Workflow:
        """The API-format workflow (a deep copy: later edits to the builder do not leak into it)."""
        return copy.deepcopy(self._nodes)
