"""The ComfyUI node pack: V1-interface classes generated from the AR* NodeSpecs.

ComfyUI reads class attributes (INPUT_TYPES, RETURN_TYPES, RETURN_NAMES, FUNCTION,
CATEGORY, OUTPUT_NODE, DESCRIPTION) and calls FUNCTION with the inputs as keyword
arguments. Each generated class wraps one arnodes node: it builds an
ExecutionContext whose progress goes to `comfy.utils.ProgressBar` and which
honours ComfyUI's interrupt button, with the input / output directories from
`folder_paths`. Those ComfyUI modules are imported inside the call, never at
import time, so this module also imports (and is tested) outside ComfyUI.
The core-named nodes (LoadImage, SaveImage, ...) are not exported: ComfyUI has its own.
"""
from __future__ import annotations

import importlib
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..engine import arrivals
from ..engine.errors import ArnodesError
from . import REGISTRY
from .base import COMBO, ExecutionContext, InputSpec, NodeResult, NodeSpec

logger = logging.getLogger(__name__)

CATEGORY_ROOT = "arnodes"
FUNCTION_NAME = "run"
# ComfyUI passes a hidden input under the key named here; "prompt" would collide with ARTextCondition's own
# prompt input (ComfyUI would hand the node the workflow in place of the text), hence "comfy_prompt".
_HIDDEN = {"unique_id": "UNIQUE_ID", "comfy_prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}


@dataclass
class ComfyContext(ExecutionContext):
    """An ExecutionContext that also knows ComfyUI's models directory for arnodes checkpoints and
    where models live (ComfyUI's model management, ``comfy_models.py``)."""

    models_dir: str | None = None
    model_host: Any = None


def _input_type(spec: InputSpec) -> tuple:
    """One INPUT_TYPES entry: ("INT", {...}), ([choices], {...}) or ("AR_MODEL", {...})."""
    opts: dict[str, Any] = {}
    if spec.default is not None:
        opts["default"] = spec.default
    for key in ("min", "max", "step"):
        value = getattr(spec, key)
        if value is not None:
            opts[key] = int(value) if spec.type == "INT" else value
    if spec.type == "FLOAT" and "step" not in opts:
        opts["step"] = 0.01
    if spec.multiline:
        opts["multiline"] = True
    if spec.tooltip:
        opts["tooltip"] = spec.tooltip
    if spec.type == COMBO:
        return (spec.choice_list() or [], opts)
    return (spec.type, opts)


def _comfy_modules() -> tuple[Any, Any, Any]:
    """(comfy.utils, comfy.model_management, folder_paths), each None outside ComfyUI."""
    found = []
    for name in ("comfy.utils", "comfy.model_management", "folder_paths"):
        try:
            found.append(importlib.import_module(name))
        except ImportError:
            found.append(None)
    return found[0], found[1], found[2]


def _progress_hook(utils: Any, mm: Any) -> Callable[[int, int], None]:
    bar: list[Any] = []

    def on_progress(step: int, total: int) -> None:
        if mm is not None:
            mm.throw_exception_if_processing_interrupted()
        if utils is not None and total > 0:
            if not bar:
                bar.append(utils.ProgressBar(total))
            bar[0].update_absolute(step, total)
    return on_progress


def _model_host(mm: Any) -> Any:
    """Inside ComfyUI its model management holds our models; outside, the engine's cache (None)."""
    if mm is None:
        return None
    from .comfy_models import comfy_models
    return comfy_models(mm)


def _dirs(folder_paths: Any) -> tuple[Path, Path, str | None]:
    if folder_paths is None:
        return Path.cwd() / "input", Path.cwd() / "output", None
    models = os.environ.get("ARNODES_MODELS_DIR") or os.path.join(folder_paths.models_dir, "arnodes")
    return Path(folder_paths.get_input_directory()), Path(folder_paths.get_output_directory()), models


def make_comfy_class(node_cls: type) -> type:
    """A ComfyUI V1 node class wrapping `node_cls` (an arnodes Node)."""
    spec: NodeSpec = node_cls.SPEC

    def INPUT_TYPES(cls) -> dict[str, dict]:
        required = {i.name: _input_type(i) for i in spec.inputs if not i.optional}
        optional = {i.name: _input_type(i) for i in spec.inputs if i.optional}
        out: dict[str, dict] = {"required": required, "hidden": dict(_HIDDEN)}
        if optional:
            out["optional"] = optional
        return out

    def run(self, unique_id: Any = None, comfy_prompt: Any = None, extra_pnginfo: Any = None, **inputs: Any):
        utils, mm, folder_paths = _comfy_modules()
        input_dir, output_dir, models_dir = _dirs(folder_paths)
        workflow = comfy_prompt if isinstance(comfy_prompt, dict) else {}
        ctx = ComfyContext(str(unique_id or spec.class_type), spec.class_type, input_dir, output_dir, workflow,
                           extra_pnginfo, _progress_hook(utils, mm), None, models_dir, _model_host(mm))
        kwargs = {i.name: inputs.get(i.name, i.default) for i in spec.inputs}
        for i in spec.inputs:  # ComfyUI passes widget FLOATs as given; the nodes expect floats
            if i.type == "FLOAT" and isinstance(kwargs[i.name], int) and not isinstance(kwargs[i.name], bool):
                kwargs[i.name] = float(kwargs[i.name])
        try:
            with arrivals.expecting(1 if spec.batchable else 0):  # ComfyUI runs one node at a time
                raw = node_cls.execute(ctx, **kwargs)
        except ArnodesError:
            raise  # bad input: ComfyUI shows it as this node's execution error, naming the input
        except Exception:
            logger.exception("arnodes: internal error in node %s (%s); this is a bug in arnodes, please report it",
                             ctx.node_id, spec.class_type)
            raise
        if isinstance(raw, NodeResult):
            return {"ui": raw.ui or {}, "result": tuple(raw.outputs)}
        return tuple(raw) if raw is not None else ()

    attrs: dict[str, Any] = {
        "__doc__": (node_cls.__doc__ or spec.description),
        "__module__": __name__,
        "INPUT_TYPES": classmethod(INPUT_TYPES),
        "RETURN_TYPES": tuple(o.type for o in spec.outputs),
        "RETURN_NAMES": tuple(o.name for o in spec.outputs),
        "OUTPUT_TOOLTIPS": tuple(o.tooltip for o in spec.outputs),
        "FUNCTION": FUNCTION_NAME,
        "CATEGORY": f"{CATEGORY_ROOT}/{spec.category}",
        "OUTPUT_NODE": spec.output_node,
        "DESCRIPTION": spec.description,
        FUNCTION_NAME: run,
        "ARNODES_NODE": node_cls,
    }
    if not spec.pure:  # ComfyUI re-runs a node whose IS_CHANGED differs from last time; NaN never equals
        attrs["IS_CHANGED"] = classmethod(lambda cls, **kw: math.nan)
    return type(spec.class_type, (), attrs)


def build_mappings(registry: dict[str, type] | None = None) -> tuple[dict[str, type], dict[str, str]]:
    """(NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS) for every non-core node."""
    registry = REGISTRY if registry is None else registry
    classes: dict[str, type] = {}
    names: dict[str, str] = {}
    for class_type, node_cls in registry.items():
        spec = node_cls.SPEC
        if spec.comfy_core:
            continue
        classes[class_type] = make_comfy_class(node_cls)
        names[class_type] = spec.display_name
    return classes, names


def use_comfy_models_folder() -> None:
    """Inside ComfyUI our models folder is ComfyUI's ``models/arnodes`` (registered with folder_paths),
    unless ARNODES_MODELS_DIR names another: the loader's list of models, the loader and its messages
    all read that variable, so they agree on one folder."""
    try:
        folder_paths = importlib.import_module("folder_paths")
    except ImportError:
        return  # not inside ComfyUI
    path = os.path.join(folder_paths.models_dir, "arnodes")
    try:
        folder_paths.add_model_folder_path("arnodes", path)
    except Exception:  # noqa: BLE001 - an older ComfyUI without it still gets the variable
        logger.debug("folder_paths.add_model_folder_path failed", exc_info=True)
    os.environ.setdefault("ARNODES_MODELS_DIR", path)


use_comfy_models_folder()
NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = build_mappings()
