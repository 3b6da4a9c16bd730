"""The contract between the graph layer and the nodes: specs, context, results.

Torch-free on purpose: `graph/` validates and schedules workflows from these
declarations alone, and never needs to know what a node computes. A node is a
stateless class with a declarative `SPEC` and a classmethod `execute`.

Input rules the executor applies (node writers can rely on them):
- every declared input is passed to `execute` as a keyword argument;
- a widget input missing from the workflow gets its `default`;
- an input is *required* when it is not `optional` and has no `default`;
  an absent optional input without default arrives as `None`;
- an INT literal given to a FLOAT input arrives as a float.
"""
from __future__ import annotations

import math
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping

from ..engine.errors import CancelledError, InvalidInputError

# Socket type names (DESIGN.md section 2).
IMAGE = "IMAGE"
MASK = "MASK"
AR_MODEL = "AR_MODEL"
AR_TOKENS = "AR_TOKENS"
AR_COND = "AR_COND"
INT = "INT"
FLOAT = "FLOAT"
STRING = "STRING"
BOOLEAN = "BOOLEAN"
COMBO = "COMBO"
ANY = "*"

#: Types that can be given as a literal in the workflow; all others are link-only.
WIDGET_TYPES = frozenset({INT, FLOAT, STRING, BOOLEAN, COMBO})

Choices = tuple[str, ...] | Callable[[], list[str]] | None


@dataclass(frozen=True)
class InputSpec:
    """One input socket or widget.

    `choices` (COMBO only): a tuple of strings, a zero-arg callable returning a
    list (dynamic lists such as model names), or None when the node validates
    the value itself (e.g. LoadImage's filename).
    """

    name: str
    type: str
    default: Any = None
    min: float | None = None
    max: float | None = None
    step: float | None = None
    choices: Choices = None
    optional: bool = False
    tooltip: str = ""
    multiline: bool = False
    # COMBO: why a value is not (yet) among the choices, e.g. a known model not on disk (None: no reason)
    unlisted: Callable[[str], str | None] | None = None
    # COMBO with a dynamic list: whether one value is a choice, without listing them all (validation
    # runs on every request; listing models stats every known checkpoint). Must agree with `choices`.
    is_choice: Callable[[str], bool] | None = None

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise ValueError(f"input name must be a Python identifier, got {self.name!r}")
        if not isinstance(self.type, str) or not self.type:
            raise ValueError(f"input {self.name!r}: type must be a non-empty string, got {self.type!r}")
        if isinstance(self.choices, list):
            object.__setattr__(self, "choices", tuple(self.choices))
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"input {self.name!r}: min {self.min} > max {self.max}")

    @property
    def is_widget(self) -> bool:
        """True when the workflow may give this input as a literal value."""
        return self.type in WIDGET_TYPES

    @property
    def required(self) -> bool:
        return not self.optional and self.default is None

    def choice_list(self) -> list[str] | None:
        """The allowed COMBO values now (dynamic lists are re-read each call)."""
        if self.choices is None:
            return None
        if callable(self.choices):
            return [str(c) for c in self.choices()]
        return list(self.choices)


@dataclass(frozen=True)
class OutputSpec:
    name: str
    type: str
    tooltip: str = ""


@dataclass(frozen=True)
class NodeSpec:
    """Declarative description of a node: what the graph layer validates against.

    `pure=False` marks nodes whose result can change with identical inputs
    (randomness not driven by a seed input, reading the clock, ...); they are
    never served from cache. `output_node=True` marks sinks (SaveImage,
    PreviewImage): the executor runs what they need. `comfy_core=True` marks
    nodes implemented under ComfyUI core names, which the ComfyUI pack must not
    re-export. `batchable=True` marks nodes the executor runs side by side when several are ready at
    once (ARGenerate: the engine batches generate requests that meet).
    """

    class_type: str
    display_name: str
    category: str
    inputs: tuple[InputSpec, ...] = ()
    outputs: tuple[OutputSpec, ...] = ()
    description: str = ""
    pure: bool = True
    output_node: bool = False
    comfy_core: bool = False
    batchable: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "inputs", tuple(self.inputs))
        object.__setattr__(self, "outputs", tuple(self.outputs))
        names = [i.name for i in self.inputs]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"node {self.class_type!r}: duplicate input names {dupes}")

    def input(self, name: str) -> InputSpec | None:
        for spec in self.inputs:
            if spec.name == name:
                return spec
        return None

    @property
    def widget_inputs(self) -> tuple[InputSpec, ...]:
        return tuple(i for i in self.inputs if i.is_widget)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description (for `arnodes nodes --json` and UIs)."""
        def one_input(i: InputSpec) -> dict[str, Any]:
            d = {"name": i.name, "type": i.type, "default": i.default, "optional": i.optional}
            for key in ("min", "max", "step"):
                if getattr(i, key) is not None:
                    d[key] = getattr(i, key)
            if i.type == COMBO:
                d["choices"] = i.choice_list()
            if i.tooltip:
                d["tooltip"] = i.tooltip
            if i.multiline:
                d["multiline"] = True
            return d

        return {
            "class_type": self.class_type, "display_name": self.display_name,
            "category": self.category, "description": self.description,
            "inputs": [one_input(i) for i in self.inputs],
            "outputs": [{"name": o.name, "type": o.type, "tooltip": o.tooltip} for o in self.outputs],
            "pure": self.pure, "output_node": self.output_node, "comfy_core": self.comfy_core,
        }


NAME_MAX_BYTES = 255  # one path component, on every common filesystem
PATH_MAX_BYTES = 4000  # a whole path, under Linux's 4096


def _check_name(name: Any, what: str) -> None:
    """Refuse names no filesystem can hold, before any path is touched: they are bad input, not our bug."""
    if not isinstance(name, str) or not name:
        raise InvalidInputError(f"{what} file name must be a non-empty string, got {name!r}")
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInputError(f"{what} file name {name!r} is not valid Unicode (it holds a lone surrogate)") from None
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise InvalidInputError(f"{what} file name {name!r} contains a control character (NUL, newline, ...)")
    if len(encoded) > PATH_MAX_BYTES:
        raise InvalidInputError(f"{what} file name is {len(encoded)} bytes long; the limit is {PATH_MAX_BYTES}")
    for part in name.replace("\\", "/").split("/"):
        if len(part.encode("utf-8")) > NAME_MAX_BYTES:
            raise InvalidInputError(f"{what} file name {part[:40]!r}... is {len(part.encode('utf-8'))} bytes long; "
                                    f"a file or folder name may have at most {NAME_MAX_BYTES} bytes")


def _safe_join(root: Path, name: str, what: str) -> Path:
    """`root / name`, refusing absolute paths, `..`, symlinks that leave `root`, and impossible names."""
    _check_name(name, what)
    rel = Path(name)
    if rel.is_absolute() or rel.drive or ".." in rel.parts:
        raise InvalidInputError(
            f"{what} file name {name!r} must be relative to the {what} directory "
            f"({root}); absolute paths and '..' are refused")
    base = root.resolve()
    path = (base / rel).resolve()
    if path != base and base not in path.parents:
        raise InvalidInputError(f"{what} file {name!r} resolves outside the {what} directory ({base})")
    return path


@dataclass
class ExecutionContext:
    """What a running node may know about its run: ids, sandboxed dirs, progress, cancel."""

    node_id: str
    class_type: str
    input_dir: Path
    output_dir: Path
    prompt: dict = field(default_factory=dict)
    extra_pnginfo: dict | None = None
    on_progress: Callable[[int, int], None] | None = None
    cancel: threading.Event | None = None

    def progress(self, step: int, total: int) -> None:
        """Report progress; raises CancelledError if cancel was requested.

        Nodes call this between generation steps, so it is also the
        cancellation point inside long-running nodes.
        """
        if self.on_progress is not None:
            self.on_progress(step, total)
        self.check_cancelled()

    def check_cancelled(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            err = CancelledError(f"node {self.node_id} ({self.class_type}): cancelled")
            err.node_id, err.class_type = self.node_id, self.class_type
            raise err

    def input_path(self, name: str) -> Path:
        """Sandboxed path of an input file (DESIGN.md section 6)."""
        return _safe_join(Path(self.input_dir), name, "input")

    def output_path(self, name: str) -> Path:
        """Sandboxed path of an output file; its parent directories are created."""
        path = _safe_join(Path(self.output_dir), name, "output")
        os.makedirs(path.parent, exist_ok=True)
        return path


@dataclass(frozen=True)
class NodeResult:
    """A node's outputs plus UI payload, e.g. `ui={"images": [paths]}`."""

    outputs: tuple = ()
    ui: dict | None = None


class Node:
    """Base class of all nodes: a declarative SPEC and a classmethod execute; no instance state."""

    SPEC: ClassVar[NodeSpec]

    @classmethod
    def execute(cls, ctx: ExecutionContext, **inputs: Any) -> tuple | NodeResult:
        raise TypeError(f"node class {cls.__name__} defines no execute classmethod; every Node subclass must")

    @classmethod
    def fingerprint(cls, ctx: ExecutionContext, **inputs: Any) -> str:
        """Extra cache-key material, e.g. an input file's size and mtime; "" for none."""
        return ""


def widget_value_problem(spec: InputSpec, value: Any) -> tuple[str, str] | None:
    """(problem type, reason) when literal `value` is not acceptable for `spec`, else None.

    Problem types: "link_required", "bad_value_type", "value_out_of_range", "bad_choice".
    """
    t = spec.type
    if t == ANY:
        return None
    if t not in WIDGET_TYPES:
        return "link_required", (f"is a {t} input and must be linked to another node's output "
                                 f"([node_id, output_index]); got the literal {value!r}")
    if t == INT:
        if isinstance(value, bool) or not isinstance(value, int):
            return "bad_value_type", f"expects an integer, got {value!r} ({type(value).__name__})"
    elif t == FLOAT:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return "bad_value_type", f"expects a number, got {value!r} ({type(value).__name__})"
        if not math.isfinite(value):
            return "bad_value_type", f"expects a finite number, got {value!r}"
    elif t == BOOLEAN:
        if not isinstance(value, bool):
            return "bad_value_type", f"expects true or false, got {value!r} ({type(value).__name__})"
    elif t in (STRING, COMBO):
        if not isinstance(value, str):
            return "bad_value_type", f"expects a string, got {value!r} ({type(value).__name__})"
    if t in (INT, FLOAT):
        if spec.min is not None and value < spec.min:
            return "value_out_of_range", f"value {value!r} is below the minimum {spec.min!r}"
        if spec.max is not None and value > spec.max:
            return "value_out_of_range", f"value {value!r} is above the maximum {spec.max!r}"
    if t == COMBO:
        try:
            if spec.is_choice is not None and spec.is_choice(value):
                return None
            allowed = spec.choice_list()
        except Exception as exc:  # a dynamic list failing (e.g. unreadable models dir) is a user-facing problem
            return "bad_choice", f"could not list the allowed values: {exc}"
        if allowed is not None and value not in allowed:
            reason = spec.unlisted(value) if spec.unlisted is not None else None
            if reason:
                return "bad_choice", reason
            shown = ", ".join(repr(c) for c in allowed[:20]) + (", ..." if len(allowed) > 20 else "")
            return "bad_choice", f"value {value!r} is not one of the allowed values: {shown or '(none available)'}"
    return None


def validate_widget_value(spec: InputSpec, value: Any) -> str | None:
    """A reason string when literal `value` is wrong for `spec` (type, range, choice), else None."""
    problem = widget_value_problem(spec, value)
    return None if problem is None else problem[1]


Registry = Mapping[str, type[Node]]
"""What the graph layer is handed: class_type -> Node subclass."""
