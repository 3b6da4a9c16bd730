"""Run workflows for many callers at once, in one sandboxed pair of folders: what any server needs.

The web app's runner builds on it, and so does a deployment on another serving engine
(``docs/serving.md``: Ray Serve), through ``handle_json``: a JSON request in, a JSON answer out,
with the PNGs inline. One executor is shared by every run, so repeated nodes (model loading,
conditioning) are cached across requests; runs from several threads go on at once, and the
engine batches generate requests for one model that meet (``engine/batching.py``).
"""
from __future__ import annotations

import base64
import logging
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, Mapping

from ..engine.errors import ArnodesError
from .errors import GraphError, NodeExecutionError
from .executor import Event, Executor
from .workflow import apply_overrides, normalize_workflow

logger = logging.getLogger(__name__)


class WorkflowService:
    """Thread-safe; one per process (or per replica)."""

    def __init__(self, workdir: str | Path | None = None, registry: Mapping[str, type] | None = None) -> None:
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="arnodes_service_"))
        self.input_dir = self.workdir / "input"
        self.output_dir = self.workdir / "output"
        self.input_dir.mkdir(parents=True, exist_ok=True)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self._registry = registry
        self._executor: Executor | None = None
        self._lock = threading.Lock()

    @property
    def registry(self) -> Mapping[str, type]:
        if self._registry is None:
            from .registry import default_registry
            self._registry = default_registry()
        return self._registry

    def run(self, workflow: Any, on_event: Callable[[Event], None] | None = None,
            cancel: threading.Event | None = None, extra_pnginfo: dict | None = None,
            ui_out: dict | None = None) -> list[Path]:
        """Run one workflow; the paths of the images its output nodes wrote. ``ui_out`` receives every
        node's UI payload (node id -> dict: e.g. a generate node's decode statistics)."""
        result = self._shared_executor().run(workflow, input_dir=self.input_dir, output_dir=self.output_dir,
                                             extra_pnginfo=extra_pnginfo, on_event=on_event, cancel=cancel)
        if ui_out is not None:
            ui_out.update(result.ui)
        return [self.output_dir / p for ui in result.ui.values() for p in ui.get("images", [])]

    def handle_json(self, request: Any) -> tuple[int, dict]:
        """``{"workflow": {API workflow}, "set": ["3.seed=7", ...]}`` -> (HTTP status, answer).

        200: ``{"images": [{"filename", "png_base64"}]}`` (each PNG embeds its workflow);
        400: ``{"error": what is wrong}`` for bad requests and bad input;
        500: ``{"error": "internal error ..."}`` for our own bugs, logged with the traceback."""
        try:
            if not isinstance(request, dict) or "workflow" not in request:
                raise GraphError('the request must be a JSON object with a "workflow" (API format) and '
                                 'optionally "set": ["NODE.INPUT=VALUE", ...]')
            overrides = request.get("set", [])
            if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
                raise GraphError('"set" must be a list of "NODE.INPUT=VALUE" strings')
            workflow = apply_overrides(normalize_workflow(request["workflow"]), overrides, self.registry)
            paths = self.run(workflow)
        except NodeExecutionError as e:
            if e.internal:
                logger.error("internal error while serving a workflow", exc_info=e.original)
                return 500, {"error": f"internal error in node {e.node_id} ({e.class_type}); see the server log"}
            return 400, {"error": str(e)}
        except ArnodesError as e:  # the request or its inputs (anything else is ours, and propagates)
            return 400, {"error": str(e)}
        return 200, {"images": [{"filename": p.name, "png_base64": base64.b64encode(p.read_bytes()).decode("ascii")}
                                for p in paths]}

    def _shared_executor(self) -> Executor:
        with self._lock:
            if self._executor is None:
                self._executor = Executor(self.registry)
            return self._executor

    def clear_results(self) -> None:
        """Forget cached node outputs, so the next runs recompute everything (benchmarks, tests)."""
        self._shared_executor().cache.clear()
