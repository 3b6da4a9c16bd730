"""What the web app's buttons do: widget values -> a workflow -> the runner -> images.

Every task is built as an API-format node graph with `graph.GraphBuilder` and run
by `WorkflowRunner` through the same executor and nodes as the CLI and ComfyUI,
ending in SaveImage, so each PNG the page offers for download embeds the
workflow that made it (`arnodes run that.png` replays it). Callbacks never call
engine functions; the runner alone reads model metadata (class names, what is
loaded) for the pickers and the Models tab.

Errors a user can act on (`ArnodesError`: unknown class, bad mask, wrong size)
become `gr.Error` with that text; anything else is logged with its traceback on
the server and shown as one line, so the page never shows a stack trace and the
server keeps serving.
"""
from __future__ import annotations

import functools
import json
import logging
import random
import re
import tempfile
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import gradio as gr
import numpy as np
from PIL import Image

from ..engine.choices import CONTROL_TYPES, DEVICES, DTYPES, GSD_GROUP_MASS, QUANTS
from ..engine.errors import ArnodesError, CancelledError, InvalidInputError
from ..graph import Event, GraphBuilder, NodeExecutionError, apply_overrides, read_workflow
from ..graph.service import WorkflowService
from ..graph.workflow import id_order_key

logger = logging.getLogger(__name__)

MAX_UI_SEED = 2 ** 31 - 1
STEP_LABELS = {  # progress-bar captions, in words an artist reads
    "ARModelLoader": "Loading model", "ARClassCondition": "Reading classes", "ARTextCondition": "Reading the prompt",
    "ARGenerate": "Generating",
    "ARDecode": "Decoding", "ARInpaint": "Inpainting", "AROutpaint": "Outpainting", "AREdit": "Editing",
    "ARSuperResolve": "Super-resolving", "ARControl": "Generating from control", "ARVariation": "Making variations",
    "SaveImage": "Saving", "LoadImage": "Reading image", "LoadImageMask": "Reading mask",
}


# ----------------------------------------------------------------------------- runner

@dataclass(frozen=True)
class Engine:
    """How every task runs its model: the page's precision, quantization and device menus (the engine's
    own lists, engine/choices.py, as the CLI's flags and the loader node's inputs)."""

    dtype: str = "float32"
    quant: str = "none"
    device: str = "auto"

    def checked(self) -> "Engine":
        for name, value, allowed in (("precision", self.dtype, DTYPES), ("quantization", self.quant, QUANTS),
                                     ("device", self.device, DEVICES)):
            if value not in allowed:
                raise InvalidInputError(f"{name} {value!r} is not one of {', '.join(allowed)}")
        return self


class WorkflowRunner(WorkflowService):
    """The app's runner: the shared workflow service (default node registry, sandboxed input / output
    folders, one executor whose output cache makes a re-run with a new seed skip model loading and
    conditioning), plus uploads and the model metadata the pickers and the Models tab show."""

    def __init__(self, workdir: str | Path | None = None, registry: Any = None) -> None:
        super().__init__(Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="arnodes_ui_")), registry)

    def save_input(self, image: Image.Image, prefix: str = "upload") -> str:
        """Store an uploaded image in the input folder; LoadImage reads it by the returned name."""
        name = f"{prefix}_{uuid.uuid4().hex[:12]}.png"
        image.save(self.input_dir / name)
        return name

    def add_input_file(self, path: str | Path) -> str:
        """Copy a file a workflow refers to by name into the input folder (name kept, folders stripped)."""
        name = re.sub(r"[^A-Za-z0-9._-]", "_", Path(path).name) or "input.png"
        (self.input_dir / name).write_bytes(Path(path).read_bytes())
        return name

    # --- model metadata for pickers and the Models tab (no weights are read) ---

    def models(self) -> list[dict]:
        """Every known model: name, family, where it comes from, present on disk, loaded copies."""
        from ..engine.registry import REGISTRY, bundled_manifests, checkpoint_present, how_to_fetch
        from ..nodes.types import local_manifests

        loaded = self.loaded()
        rows = []
        def add(name: str, family: str, source: str, present: bool) -> None:
            mine = [m for m in loaded if m["name"] in (name, source)]
            rows.append({"name": name, "family": family, "source": source, "present": present,
                         "loaded": ", ".join(f"{m['device']}/{m['dtype']}/{m['quant']}" for m in mine),
                         "memory_mb": round(sum(m["bytes"] for m in mine) / 2 ** 20, 1)})
        for name, path in bundled_manifests().items():
            add(name, _manifest(path).get("family", "?"), "bundled", True)
        for name, entry in REGISTRY.items():
            present = checkpoint_present(entry)
            add(name, entry.family, (entry.hf_repo or "bundled") if present else how_to_fetch(entry), present)
        for name, path in local_manifests().items():
            add(name, _manifest(path).get("family", "?"), str(path), True)
        return sorted(rows, key=lambda r: not r["present"])  # what runs now first

    def model_choices(self) -> list[str]:
        """Models that can run without a download, bundled first."""
        return [r["name"] for r in self.models() if r["present"]]

    def default_model(self) -> str | None:
        from ..engine.registry import DEFAULT_MODEL
        choices = self.model_choices()
        return DEFAULT_MODEL if DEFAULT_MODEL in choices else (choices[0] if choices else None)

    def class_choices(self, model: str | None) -> list[tuple[str, str]]:
        """(label, value) pairs for the class picker; the label shows the emoji when the model has one."""
        return list(_class_choices(model or "", _models_key()))

    def takes_prompt(self, model: str | None) -> bool:
        """Whether ``model`` is a text-to-image model (read from its manifest or registry entry, not loaded)."""
        from ..engine.registry import takes_text
        from ..nodes.types import resolve_model_name
        if not model:
            return False
        try:
            return takes_text(resolve_model_name(model))
        except ArnodesError:
            return False

    def style_choices(self) -> list[str]:
        """'any' and the bundled models' drawing styles (the node's list)."""
        from ..nodes.types import style_choices
        return style_choices()

    def loaded(self) -> list[dict]:
        try:
            from ..engine.model_cache import default_cache
        except ImportError:
            return []
        return default_cache().info()

    def unload(self, name: str | None = None) -> int:
        """Drop a model (all copies of it; every model for None) from the model cache."""
        from ..engine.model_cache import default_cache
        from ..nodes.types import resolve_model_name
        return default_cache().unload(None if name is None else resolve_model_name(name))


def _manifest(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _models_key() -> str:
    """Invalidates the class-name cache when the models directory changes (tests point it elsewhere)."""
    from ..engine.resolve import default_models_dir
    return str(default_models_dir())


@functools.lru_cache(maxsize=16)
def _class_choices(model: str, _models_dir: str) -> tuple[tuple[str, str], ...]:
    from ..engine.classes import load_class_names
    from ..engine.registry import REGISTRY, bundled_manifests, manifest_class_spec
    from ..nodes.types import local_manifests

    manifest = bundled_manifests().get(model) or local_manifests().get(model)
    spec = (manifest_class_spec(_manifest(manifest)) if manifest is not None
            else REGISTRY[model].classes if model in REGISTRY else None)
    if spec is None:  # unknown, or a text-to-image model: no classes to pick
        return ()
    try:
        names = load_class_names(spec, base_dir=manifest.parent if manifest is not None else None)
    except ArnodesError:
        logger.warning("no class names for model %s", model, exc_info=True)
        return ()
    emoji = names.emoji or [""] * len(names)
    return tuple((f"{e} {n}".strip(), n) for e, n in zip(emoji, names.names))


# ----------------------------------------------------------------------------- errors, cancel

def readable_errors(fn: Callable) -> Callable:
    """Turn exceptions into one readable `gr.Error`; the traceback goes to the server log only."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except CancelledError:
            raise gr.Error("Stopped: the run was cancelled, nothing was saved.", title="Cancelled") from None
        except NodeExecutionError as e:
            if isinstance(e.original, CancelledError):
                raise gr.Error("Stopped: the run was cancelled, nothing was saved.", title="Cancelled") from None
            step = STEP_LABELS.get(e.class_type, e.class_type)
            if e.internal:  # our bug, not the user's input: say so, traceback to the server log
                logger.exception("internal error in node %s (%s)", e.node_id, e.class_type)
                raise gr.Error(f"Internal error in {step} ({type(e.original).__name__}: {e.original}). This is a "
                               f"bug in arnodes, not a problem with your input; the server log has details.",
                               title="Internal error") from None
            raise gr.Error(f"{step} failed: {e.original}", title="Could not finish") from None
        except ArnodesError as e:
            raise gr.Error(str(e), title="Check the inputs") from None
        except Exception as e:  # a bug, not bad input: log it, keep the page and the server alive
            logger.exception("callback %s failed", getattr(fn, "__name__", fn))
            raise gr.Error(f"Internal error ({type(e).__name__}): {e}. The server log has details.",
                           title="Internal error") from None
    return wrapper


class CancelBoard:
    """One cancel flag per browser session: the Cancel button sets the flag of its own session's run."""

    def __init__(self) -> None:
        self._events: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def start(self, session: str) -> threading.Event:
        with self._lock:
            self._events[session] = event = threading.Event()
            return event

    def finish(self, session: str, event: threading.Event) -> None:
        with self._lock:
            if self._events.get(session) is event:
                del self._events[session]

    def cancel(self, session: str) -> bool:
        with self._lock:
            event = self._events.get(session)
        if event is not None:
            event.set()
        return event is not None


def _session(request: gr.Request | None) -> str:
    return getattr(request, "session_hash", None) or "default"


def _reporter(progress: gr.Progress | None) -> Callable[[Event], None]:
    """Executor events -> the progress bar: one caption per node, a bar over each node's steps."""
    def on_event(ev: Event) -> None:
        if progress is None:
            return
        label = STEP_LABELS.get(ev.class_type or "", ev.class_type or "")
        if ev.kind == "node_start":
            progress(None, desc=label)
        elif ev.kind == "progress" and ev.total:
            progress((int(ev.step or 0), int(ev.total)), desc=label, unit="steps")
    return on_event


# ----------------------------------------------------------------------------- widget helpers

def join_classes(classes: str | Sequence[str] | None) -> str:
    """The class picker's value(s) -> ARClassCondition's comma-separated `classes`."""
    if classes is None:
        items: list[str] = []
    elif isinstance(classes, str):
        items = [classes]
    else:
        items = [str(c) for c in classes]
    items = [c.strip() for c in items if str(c).strip()]
    if not items:
        raise InvalidInputError("pick at least one class (type to search the class names)")
    return "; ".join(items)


def decode_summaries(ui: dict) -> list[str]:
    """One line per generation in a run's node UI payloads: the decode strategy, its forward passes and
    time (what speculative decoding saved is visible after every run, as in ``--stats-json``)."""
    lines = []
    for payload in ui.values():
        for st in payload.get("stats", []) if isinstance(payload, dict) else []:
            if "forwards" in st:
                tokens = f" for {st['tokens']} tokens" if "tokens" in st else ""
                seconds = f" in {st['seconds']:.2f} s" if "seconds" in st else ""
                drafts = f" ({st['drafts']} drafts)" if "drafts" in st else ""
                lines.append(f"{st.get('decode', 'plain')} decoding{drafts}: {st['forwards']} model forwards"
                             f"{tokens}{seconds}")
    return lines


def pick_seed(seed: float | int | None, randomize: bool) -> int:
    if randomize or seed is None:
        return random.randint(0, MAX_UI_SEED)
    return int(seed)


def to_pil(image: Any, what: str = "image") -> Image.Image:
    """A Gradio image value (PIL, numpy, path, or an ImageEditor dict) -> RGB PIL image."""
    if isinstance(image, dict):
        image = image.get("background") if image.get("background") is not None else image.get("composite")
    if image is None:
        raise InvalidInputError(f"upload an {what} first")
    if isinstance(image, (str, Path)):
        with Image.open(image) as im:
            return im.convert("RGB")
    if isinstance(image, np.ndarray):
        return Image.fromarray(image.astype(np.uint8)).convert("RGB")
    return image.convert("RGB")


def mask_from_editor(value: dict | None) -> Image.Image:
    """Painted strokes of an ImageEditor value -> white-on-black mask (white = regenerate)."""
    image = to_pil(value)
    painted = np.zeros((image.height, image.width), dtype=bool)
    for layer in (value or {}).get("layers") or []:
        if layer is None:
            continue
        if isinstance(layer, (str, Path)):
            with Image.open(layer) as im:
                layer = im.convert("RGBA")
        arr = np.asarray(layer.convert("RGBA") if isinstance(layer, Image.Image) else layer)
        if arr.ndim != 3 or arr.shape[2] != 4:
            raise InvalidInputError("the mask layer must be an RGBA image; paint on the image with the brush")
        if arr.shape[:2] != painted.shape:
            raise InvalidInputError(f"the painted mask is {arr.shape[1]}x{arr.shape[0]} but the image is "
                                    f"{image.width}x{image.height}; paint on the uploaded image itself")
        painted |= arr[..., 3] > 0
    if not painted.any():
        raise InvalidInputError("paint over the area to regenerate first (brush tool on the image)")
    return Image.fromarray((painted * 255).astype(np.uint8), mode="L")


def gallery_image(gallery: Any, index: int | None) -> str | None:
    """The selected (else first) image path of a Gallery value."""
    if not gallery:
        return None
    item = gallery[min(max(int(index or 0), 0), len(gallery) - 1)]
    if isinstance(item, (list, tuple)):
        item = item[0]
    if isinstance(item, dict):
        item = item.get("path") or (item.get("image") or {}).get("path")
    return str(item) if item is not None else None


# ----------------------------------------------------------------------------- callbacks

class Callbacks:
    """The app's event handlers; each builds a workflow and hands it to the runner."""

    def __init__(self, runner: Any) -> None:
        self.runner = runner
        self.cancels = CancelBoard()

    # --- shared plumbing ---

    def _base(self, g: GraphBuilder, model: str | None, classes: Any, cfg: float,
              style: str | None = "any", engine: "Engine | None" = None, prompt: str | None = "",
              negative: str | None = "") -> tuple[Any, Any]:
        """The loader and the condition: ARTextCondition when a prompt is given or the model is
        text-to-image, else ARClassCondition from the class picker."""
        if not model:
            raise InvalidInputError("pick a model first (Models tab lists what is available)")
        engine = (engine or Engine()).checked()
        prompt, negative = str(prompt or "").strip(), str(negative or "").strip()
        model = self._model_for_prompt(model, classes, prompt)
        m = g.node("ARModelLoader", model=model, dtype=engine.dtype, quant=engine.quant, device=engine.device)
        if prompt or self.runner.takes_prompt(model):
            if not prompt:
                raise InvalidInputError(f"{model} is a text-to-image model: write a prompt (what to draw, in words)")
            c = g.node("ARTextCondition", model=m.out(0), prompt=prompt, cfg=float(cfg), negative=negative,
                       cfg_interval=-1)
        else:
            c = g.node("ARClassCondition", model=m.out(0), classes=join_classes(classes), cfg=float(cfg),
                       cfg_schedule="linear", negative="", style=style or "any")
        return m, c

    def _model_for_prompt(self, model: str, classes: Any, prompt: str) -> str:
        """A prompt with no class on the default class model means "draw this": the bundled text model
        draws it (as the CLI's ``--prompt`` without ``--model``), and a toast says so."""
        from ..engine.registry import DEFAULT_MODEL, DEFAULT_TEXT_MODEL
        picked = [classes] if isinstance(classes, str) else list(classes or [])
        if (prompt and model == DEFAULT_MODEL and not any(str(c).strip() for c in picked)
                and DEFAULT_TEXT_MODEL in self.runner.model_choices()):
            gr.Info(f"{DEFAULT_MODEL} draws classes; the prompt is drawn by the text model {DEFAULT_TEXT_MODEL}")
            return DEFAULT_TEXT_MODEL
        return model

    def _execute(self, g: GraphBuilder, result: Any, prefix: str, request: gr.Request | None,
                 progress: gr.Progress | None, shown_first: Any = None) -> tuple[list[str], list[str]]:
        """Add SaveImage, run with progress and this session's cancel flag; (gallery paths, download paths).
        ``shown_first``: another image node (e.g. the control map) saved too and listed before the result."""
        if shown_first is not None:
            g.node("SaveImage", images=shown_first.out(0), filename_prefix=f"arnodes_{prefix}_input")
        g.node("SaveImage", images=result.out(0), filename_prefix=f"arnodes_{prefix}")
        session = _session(request)
        cancel = self.cancels.start(session)
        ui: dict = {}
        try:
            paths = self.runner.run(g.build(), on_event=_reporter(progress), cancel=cancel, ui_out=ui)
        finally:
            self.cancels.finish(session, cancel)
        for line in decode_summaries(ui):
            gr.Info(line)
        files = sorted((str(p) for p in paths), key=lambda p: f"arnodes_{prefix}_input" not in Path(p).name)
        return files, files

    @staticmethod
    def _sampler(seed: int, top_k: float, top_p: float, temperature: float) -> dict:
        return {"seed": int(seed), "top_k": int(top_k), "top_p": float(top_p), "temperature": float(temperature)}

    @staticmethod
    def _decoding(decode: str, draft_window: float, draft_init: str, group_mass: float) -> dict:
        """The decode node inputs (nodes/types.py: decode_inputs); group_mass reaches gsd only."""
        return {"decode": decode, "draft_window": int(draft_window or 0), "draft_init": draft_init,
                "group_mass": float(group_mass)}

    def _load(self, g: GraphBuilder, image: Any, what: str = "image") -> Any:
        return g.node("LoadImage", image=self.runner.save_input(to_pil(image, what), what.replace(" ", "_")))

    def cancel(self, request: gr.Request) -> None:
        """Stop this session's run at its next step."""
        if self.cancels.cancel(_session(request)):
            gr.Info("Cancelling…")

    # --- tasks ---

    @readable_errors
    def generate(self, model: str, classes: Any, seed: float, randomize: bool, cfg: float, top_k: float,
                 top_p: float, temperature: float, batch: float, style: str = "any",
                 dtype: str = "float32", quant: str = "none", device: str = "auto", decode: str = "plain",
                 prompt: str = "", negative_prompt: str = "", draft_window: float = 0, draft_init: str = "auto",
                 group_mass: float = GSD_GROUP_MASS, request: gr.Request = None,
                 progress: gr.Progress = gr.Progress()) -> tuple[list[str], list[str], int]:
        """Generation: one image per class and batch slot, or per batch slot of the prompt (text models)."""
        seed = pick_seed(seed, randomize)
        g = GraphBuilder()
        m, c = self._base(g, model, classes, cfg, style, Engine(dtype, quant, device), prompt, negative_prompt)
        t = g.node("ARGenerate", model=m.out(0), cond=c.out(0), batch_size=int(batch), more_smooth=False,
                   **self._sampler(seed, top_k, top_p, temperature),
                   **self._decoding(decode, draft_window, draft_init, group_mass))
        image = g.node("ARDecode", model=m.out(0), tokens=t.out(0), scales=0)
        return (*self._execute(g, image, "generate", request, progress), seed)

    @readable_errors
    def inpaint(self, model: str, editor: dict, classes: Any, seed: float, randomize: bool, cfg: float,
                top_k: float, top_p: float, temperature: float, style: str = "any",
                dtype: str = "float32", quant: str = "none", device: str = "auto", decode: str = "plain",
                prompt: str = "", negative_prompt: str = "", draft_window: float = 0, draft_init: str = "auto",
                group_mass: float = GSD_GROUP_MASS, request: gr.Request = None,
                progress: gr.Progress = gr.Progress()) -> tuple[list[str], list[str], int]:
        """Regenerate the painted area; the rest of the image is kept token for token."""
        mask = mask_from_editor(editor)
        seed = pick_seed(seed, randomize)
        g = GraphBuilder()
        m, c = self._base(g, model, classes, cfg, style, Engine(dtype, quant, device), prompt, negative_prompt)
        image = self._load(g, editor)
        mask_node = g.node("LoadImageMask", image=self.runner.save_input(mask, "mask"), channel="red")
        out = g.node("ARInpaint", model=m.out(0), cond=c.out(0), image=image.out(0), mask=mask_node.out(0),
                     keep_unmasked=True, **self._sampler(seed, top_k, top_p, temperature),
                     **self._decoding(decode, draft_window, draft_init, group_mass))
        return (*self._execute(g, out, "inpaint", request, progress), seed)

    @readable_errors
    def outpaint(self, model: str, editor: dict, classes: Any, left: float, top: float, right: float,
                 bottom: float, feathering: float, seed: float, randomize: bool, cfg: float, top_k: float,
                 top_p: float, temperature: float, style: str = "any",
                 dtype: str = "float32", quant: str = "none", device: str = "auto", decode: str = "plain",
                 prompt: str = "", negative_prompt: str = "", draft_window: float = 0, draft_init: str = "auto",
                 group_mass: float = GSD_GROUP_MASS, request: gr.Request = None,
                 progress: gr.Progress = gr.Progress()) -> tuple[list[str], list[str], int]:
        """Extend the canvas on the chosen sides and generate the new border."""
        if not any((left, top, right, bottom)):
            raise InvalidInputError("set at least one side to extend (left, top, right or bottom > 0)")
        seed = pick_seed(seed, randomize)
        g = GraphBuilder()
        m, c = self._base(g, model, classes, cfg, style, Engine(dtype, quant, device), prompt, negative_prompt)
        image = self._load(g, editor)
        out = g.node("AROutpaint", model=m.out(0), cond=c.out(0), image=image.out(0), left=int(left), top=int(top),
                     right=int(right), bottom=int(bottom), feathering=int(feathering),
                     **self._sampler(seed, top_k, top_p, temperature),
                     **self._decoding(decode, draft_window, draft_init, group_mass))
        return (*self._execute(g, out, "outpaint", request, progress), seed)

    @readable_errors
    def edit(self, model: str, image: Any, classes: Any, left: float, top: float, right: float, bottom: float,
             invert: bool, seed: float, randomize: bool, cfg: float, top_k: float, top_p: float,
             temperature: float, style: str = "any",
             dtype: str = "float32", quant: str = "none", device: str = "auto",
             prompt: str = "", negative_prompt: str = "", request: gr.Request = None,
             progress: gr.Progress = gr.Progress()) -> tuple[list[str], list[str], int]:
        """Regenerate a box of the image as another class (box edges in % of the image)."""
        if left >= right or top >= bottom:
            raise InvalidInputError(f"the region is empty: left {left}% must be < right {right}% and "
                                    f"top {top}% < bottom {bottom}%")
        seed = pick_seed(seed, randomize)
        g = GraphBuilder()
        m, c = self._base(g, model, classes, cfg, style, Engine(dtype, quant, device), prompt, negative_prompt)
        img = self._load(g, image)
        region = g.node("ARRegionMask", image=img.out(0), left=left / 100, top=top / 100, right=right / 100,
                        bottom=bottom / 100, invert=bool(invert))
        out = g.node("AREdit", model=m.out(0), image=img.out(0), mask=region.out(0), cond=c.out(0),
                     **self._sampler(seed, top_k, top_p, temperature))
        return (*self._execute(g, out, "edit", request, progress), seed)

    @readable_errors
    def super_resolve(self, model: str, image: Any, classes: Any, scale: float, seed: float, randomize: bool,
                      cfg: float, top_k: float, top_p: float, temperature: float, style: str = "any",
                      dtype: str = "float32", quant: str = "none", device: str = "auto",
                      prompt: str = "", negative_prompt: str = "", request: gr.Request = None,
                      progress: gr.Progress = gr.Progress()) -> tuple[list[str], list[str], int]:
        """Training-free super-resolution: keep the coarse scales of the upsampled image, generate the fine ones."""
        seed = pick_seed(seed, randomize)
        g = GraphBuilder()
        m, c = self._base(g, model, classes, cfg, style, Engine(dtype, quant, device), prompt, negative_prompt)
        img = self._load(g, image)
        out = g.node("ARSuperResolve", model=m.out(0), cond=c.out(0), image=img.out(0), scale=int(scale),
                     **self._sampler(seed, top_k, top_p, temperature))
        return (*self._execute(g, out, "superres", request, progress), seed)

    @readable_errors
    def control(self, model: str, image: Any, classes: Any, control_type: str, strength: float, seed: float,
                randomize: bool, cfg: float, top_k: float, top_p: float, temperature: float, style: str = "any",
                dtype: str = "float32", quant: str = "none", device: str = "auto",
                prompt: str = "", negative_prompt: str = "", request: gr.Request = None,
                progress: gr.Progress = gr.Progress()) -> tuple[list[str], list[str], int]:
        """New image of the class drawn along the picture's structure: the control map (Canny edges, or the
        picture itself with 'none') is shown first, then the result."""
        seed = pick_seed(seed, randomize)
        if control_type not in CONTROL_TYPES:
            raise InvalidInputError(f"control type {control_type!r} is not one of {', '.join(CONTROL_TYPES)}")
        g = GraphBuilder()
        m, c = self._base(g, model, classes, cfg, style, Engine(dtype, quant, device), prompt, negative_prompt)
        control_map = self._load(g, image, "control image")
        if control_type == "canny":
            from ..engine.registry import control_preprocessor
            trained = control_preprocessor(model, "canny")  # the thresholds the adapter was trained with
            control_map = g.node("Canny", image=control_map.out(0), low_threshold=trained.low_threshold,
                                 high_threshold=trained.high_threshold)
        out = g.node("ARControl", model=m.out(0), cond=c.out(0), control_image=control_map.out(0),
                     control_type="canny", strength=float(strength), **self._sampler(seed, top_k, top_p, temperature))
        return (*self._execute(g, out, "control", request, progress, shown_first=control_map), seed)

    @readable_errors
    def variation(self, model: str, image: Any, classes: Any, strength: float, seed: float, randomize: bool,
                  cfg: float, top_k: float, top_p: float, temperature: float, style: str = "any",
                  dtype: str = "float32", quant: str = "none", device: str = "auto",
                  prompt: str = "", negative_prompt: str = "", request: gr.Request = None,
                  progress: gr.Progress = gr.Progress()) -> tuple[list[str], list[str], int]:
        """Img2img: keep the image's first scales (fewer with more strength) and resample the rest."""
        seed = pick_seed(seed, randomize)
        g = GraphBuilder()
        m, c = self._base(g, model, classes, cfg, style, Engine(dtype, quant, device), prompt, negative_prompt)
        img = self._load(g, image)
        out = g.node("ARVariation", model=m.out(0), cond=c.out(0), image=img.out(0), strength=float(strength),
                     **self._sampler(seed, top_k, top_p, temperature))
        return (*self._execute(g, out, "variation", request, progress), seed)

    # --- workflows ---

    def _read(self, file: Any) -> Any:
        if file is None:
            raise InvalidInputError("upload a workflow: an API-format .json, or a .png made by arnodes or ComfyUI")
        path = Path(file if isinstance(file, (str, Path)) else getattr(file, "name", file))
        return read_workflow(path.read_bytes(), self.runner.registry)

    @readable_errors
    def workflow_load(self, file: Any) -> tuple[list[list[str]], str]:
        """Show a workflow's editable values (one row per widget input) and a summary of its nodes."""
        loaded = self._read(file)
        rows, lines = [], []
        for node_id in sorted(loaded.prompt, key=id_order_key):
            node = loaded.prompt[node_id]
            links = [f"{k} ← {v[0]}" for k, v in node["inputs"].items() if isinstance(v, list)]
            lines.append(f"| {node_id} | **{node['class_type']}** | {', '.join(links) or '—'} |")
            for name, value in node["inputs"].items():
                if not isinstance(value, list):
                    rows.append([node_id, node["class_type"], name,
                                 value if isinstance(value, str) else json.dumps(value)])
        summary = "| id | node | inputs from |\n|---|---|---|\n" + "\n".join(lines)
        return rows, f"**{len(loaded.prompt)} nodes.** Edit values in the table, then Run.\n\n{summary}"

    @readable_errors
    def workflow_run(self, file: Any, table: Any, input_files: Any, request: gr.Request = None,
                     progress: gr.Progress = gr.Progress()) -> tuple[list[str], list[str]]:
        """Run an uploaded workflow with the table's values; images it needs come from `input_files`."""
        loaded = self._read(file)
        for f in _as_list(input_files):
            self.runner.add_input_file(f if isinstance(f, (str, Path)) else getattr(f, "name", f))
        overrides = [f"{row[0]}.{row[2]}={row[3]}" for row in _table_rows(table)]
        workflow = apply_overrides(loaded.prompt, overrides, self.runner.registry)
        session = _session(request)
        cancel = self.cancels.start(session)
        try:
            paths = self.runner.run(workflow, on_event=_reporter(progress), cancel=cancel,
                                       extra_pnginfo=loaded.extra_pnginfo)
        finally:
            self.cancels.finish(session, cancel)
        if not paths:
            gr.Info("The workflow ran; it has no SaveImage / PreviewImage node, so there is nothing to show.")
        files = [str(p) for p in paths]
        return files, files

    # --- models ---

    def models_table(self) -> list[list[Any]]:
        return [[r["name"], r["family"], r["source"], "yes" if r["present"] else "no", r["loaded"] or "—",
                 r["memory_mb"]] for r in self.runner.models()]

    @readable_errors
    def model_load(self, model: str, dtype: str, quant: str, device: str, request: gr.Request = None,
                   progress: gr.Progress = gr.Progress()) -> list[list[Any]]:
        """Load a model now (through the ARModelLoader node) so the first generation starts at once."""
        if not model:
            raise InvalidInputError("pick a model to load")
        g = GraphBuilder()
        g.node("ARModelLoader", model=model, dtype=dtype, quant=quant, device=device)
        self.runner.run(g.build(), on_event=_reporter(progress))
        gr.Info(f"{model} is loaded")
        return self.models_table()

    @readable_errors
    def model_unload(self, model: str | None) -> list[list[Any]]:
        """Free a model's memory (every loaded copy); with no model picked, free them all."""
        n = self.runner.unload(model or None)
        gr.Info(f"unloaded {n} model cop{'y' if n == 1 else 'ies'}")
        return self.models_table()

    # --- small UI helpers ---

    def classes_for(self, model: str | None) -> Any:
        """New class choices when the model changes (keeps the current pick if the new model has it)."""
        choices = self.runner.class_choices(model)
        return gr.update(choices=choices, value=[choices[0][1]] if choices else [])

    @staticmethod
    def send_to(gallery: Any, index: int | None) -> Any:
        """The selected result as the input of another task."""
        path = gallery_image(gallery, index)
        if path is None:
            raise gr.Error("Nothing to send yet: run a task first.", title="No image")
        return path

    @staticmethod
    def send_to_editor(gallery: Any, index: int | None) -> dict:
        path = Callbacks.send_to(gallery, index)
        return {"background": path, "layers": [], "composite": path}

    @staticmethod
    def selected(evt: gr.SelectData) -> int:
        return int(evt.index or 0)


def _as_list(value: Any) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _table_rows(table: Any) -> Iterable[list[str]]:
    """Dataframe value (list of rows, pandas frame, or {"data": rows}) -> [node, class, input, value] rows."""
    if table is None:
        return []
    if hasattr(table, "values") and hasattr(table, "columns"):
        table = table.values.tolist()
    elif isinstance(table, dict):
        table = table.get("data") or []
    return [[str(c) if c is not None else "" for c in row] for row in table
            if row and len(row) >= 4 and str(row[0]).strip() and str(row[2]).strip()]
