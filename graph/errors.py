"""Errors of the graph layer; all are `ArnodesError`s so the CLI reports them uniformly."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..engine.errors import ArnodesError, InvalidInputError, UnknownNameError, is_user_error


class GraphError(ArnodesError):
    """Base class of workflow / graph problems."""


class WorkflowError(GraphError, InvalidInputError):
    """A workflow file or dict is malformed, or cannot be converted / overridden."""


class UnknownNodeError(GraphError, UnknownNameError):
    """A node id or class_type that does not exist."""


class CycleError(GraphError):
    """The links form a cycle; `.node_ids` names the nodes in it."""

    def __init__(self, message: str, node_ids: list[str] | None = None):
        super().__init__(message)
        self.node_ids = list(node_ids or [])


@dataclass
class Problem:
    """One validation finding, shaped like ComfyUI's `{type, message, details}` payload."""

    type: str
    message: str
    node_id: str | None = None
    class_type: str | None = None
    input_name: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.message


class ValidationError(GraphError, InvalidInputError):
    """The workflow failed validation; `.problems` lists every problem found."""

    def __init__(self, problems: list[Problem]):
        self.problems = list(problems)
        n = len(self.problems)
        lines = [f"workflow is invalid ({n} problem{'s' if n != 1 else ''}):"]
        lines += [f"  - {p.message}" for p in self.problems]
        super().__init__("\n".join(lines))


class NodeExecutionError(GraphError):
    """A node raised while executing; the original exception is `.original` and `__cause__`.

    `.internal` tells the two cases apart: False when the node refused bad input with one of
    our typed errors (the user can fix it), True when anything else escaped the node, which
    is a bug in arnodes and is reported as such (CLI exit status 70, traceback logged).
    """

    def __init__(self, node_id: str, class_type: str, original: BaseException, message: str | None = None):
        self.node_id = node_id
        self.class_type = class_type
        self.original = original
        self.internal = not is_user_error(original)
        text = message if message is not None else (str(original) or type(original).__name__)
        if self.internal and message is None:
            text = f"internal error ({type(original).__name__}: {text})"
        super().__init__(f"node {node_id} ({class_type}): {text}")
