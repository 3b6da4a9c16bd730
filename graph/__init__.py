"""Workflow graph layer: load, validate, execute and cache node graphs. Torch-free.

The node registry (class_type -> Node class) is always passed in; the default
one lives in `graph/registry.py`.
"""
from __future__ import annotations

from .builder import GraphBuilder, NodeRef
from .cache import Cache, CacheEntry, LRUCache, NullCache
from .errors import (
    CycleError, GraphError, NodeExecutionError, Problem, UnknownNodeError, ValidationError, WorkflowError,
)
from .executor import Event, Executor, RunResult, run_workflow
from .validate import validate
from .workflow import (
    LoadedWorkflow, apply_overrides, is_link, load_workflow, normalize_workflow, read_png_text, read_workflow,
    save_workflow_json, ui_to_api,
)

__all__ = [
    "Cache", "CacheEntry", "CycleError", "Event", "Executor", "GraphBuilder", "GraphError", "LRUCache",
    "LoadedWorkflow", "NodeExecutionError", "NodeRef", "NullCache", "Problem", "RunResult", "UnknownNodeError",
    "ValidationError", "WorkflowError", "apply_overrides", "is_link", "load_workflow", "normalize_workflow",
    "read_png_text", "read_workflow", "run_workflow", "save_workflow_json", "ui_to_api", "validate",
]
