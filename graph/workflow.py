"""Workflow I/O: load (dict / JSON / PNG), convert ComfyUI UI format, `--set` overrides, save.

The runnable format is ComfyUI's API format::

    {node_id: {"class_type": str, "inputs": {name: literal | [src_node_id, output_index]}, "_meta": {...}}}

A 2-element list `[str|int, int]` is always a link (no widget type takes a list);
node ids are normalised to strings.

PNG files: the text chunks (tEXt / zTXt / iTXt, parsed here with struct+zlib so
the graph layer needs no imaging library) hold `prompt` (API format, what runs)
and optionally `workflow` (UI format, kept so it can be re-embedded on save).

ComfyUI UI format (top-level "nodes" and "links" lists) is converted with the
node registry. Decisions:
- `widgets_values` is matched, in order, against the node's widget inputs
  (INT/FLOAT/STRING/BOOLEAN/COMBO, spec order). ComfyUI stores a value for every
  widget, including widgets turned into linked inputs, so the values are first
  mapped onto all widget inputs; if there are too few for that, onto the widget
  inputs that are not linked. Trailing extra values belong to frontend-only
  widgets (e.g. LoadImage's upload button) and are ignored. A dict-shaped
  `widgets_values` is matched by name.
- The "control_after_generate" value ("fixed"/"increment"/"decrement"/"randomize")
  that ComfyUI stores after a seed INT (an INT input whose name ends in "seed")
  is skipped.
- Links come from the links table, via each node input's link id. Reroute nodes
  are followed; links from a PrimitiveNode keep the target's own widget value;
  muted nodes (mode 2) are dropped (their consumers then miss that input);
  bypassed nodes (mode 4) pass through their first linked input of the
  output's type, as ComfyUI does; Note/MarkdownNote are ignored.
- Anything else (unknown node types, subgraphs, value counts that do not fit)
  raises WorkflowError asking for ComfyUI's "Export (API)" file instead.

`nodes.base` is imported inside functions: `nodes/__init__` gathers torch-backed
node modules, and `import arnodes.graph` must stay torch-free.
"""
from __future__ import annotations

import copy
import json
import logging
import math
import os
import struct
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from ..engine.errors import ArnodesError, MissingFileError
from .errors import UnknownNodeError, WorkflowError

logger = logging.getLogger(__name__)

Workflow = dict[str, dict[str, Any]]

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_MAX_TEXT_BYTES = 64 * 1024 * 1024  # refuse zip bombs in compressed text chunks
_EXPORT_HINT = 'In ComfyUI use "Export (API)" (Workflow menu) and run that file instead.'
MAX_NESTING = 32  # lists / dicts inside an input value; no widget takes more than a flat value


@dataclass
class LoadedWorkflow:
    """A loaded workflow: `prompt` is what runs; `ui_workflow` is the UI graph if one came with it."""

    prompt: Workflow
    ui_workflow: dict | None = None
    source: str = "<dict>"

    @property
    def extra_pnginfo(self) -> dict | None:
        """What SaveImage should embed besides `prompt` (ComfyUI's convention)."""
        return {"workflow": self.ui_workflow} if self.ui_workflow is not None else None


def is_link(value: Any) -> bool:
    """True for `[src_node_id, output_index]`."""
    return (isinstance(value, (list, tuple)) and len(value) == 2
            and isinstance(value[0], (str, int)) and not isinstance(value[0], bool)
            and isinstance(value[1], int) and not isinstance(value[1], bool))


def normalize_workflow(data: Any, origin: str = "workflow") -> Workflow:
    """A validated-in-shape deep copy of an API-format workflow; every shape problem in one error."""
    if is_ui_workflow(data):
        raise WorkflowError(f"{origin} is in ComfyUI's UI format; load it with load_workflow(..., registry) "
                            f"to convert it. {_EXPORT_HINT}")
    if not isinstance(data, dict):
        raise WorkflowError(f"{origin} must be a JSON object mapping node ids to nodes, "
                            f"got {type(data).__name__}")
    out: Workflow = {}
    errors: list[str] = []
    for raw_id, node in data.items():
        node_id = str(raw_id)
        if not isinstance(node, dict):
            errors.append(f"node {node_id}: must be an object with 'class_type' and 'inputs', "
                          f"got {type(node).__name__}")
            continue
        class_type = node.get("class_type")
        if not isinstance(class_type, str) or not class_type:
            errors.append(f"node {node_id}: missing 'class_type' (a node type name such as 'SaveImage')")
            continue
        inputs = node.get("inputs", {})
        if not isinstance(inputs, dict):
            errors.append(f"node {node_id} ({class_type}): 'inputs' must be an object, got {type(inputs).__name__}")
            continue
        clean: dict[str, Any] = {}
        for name, value in inputs.items():
            if is_link(value):
                clean[str(name)] = [str(value[0]), value[1]]
            elif _too_deep(value):
                errors.append(f"node {node_id} ({class_type}) input {str(name)!r}: value is nested more than "
                              f"{MAX_NESTING} levels deep")
            else:
                clean[str(name)] = copy.deepcopy(value)
        entry: dict[str, Any] = {"class_type": class_type, "inputs": clean}
        meta = node.get("_meta")
        if isinstance(meta, dict) and not _too_deep(meta):
            entry["_meta"] = copy.deepcopy(meta)
        out[node_id] = entry
    if errors:
        raise WorkflowError(f"{origin} is malformed:\n" + "\n".join(f"  - {e}" for e in errors))
    return out


def _too_deep(value: Any, limit: int | None = None) -> bool:
    """True when lists / dicts nest deeper than MAX_NESTING (iterative: no recursion to exhaust)."""
    limit = MAX_NESTING if limit is None else limit
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (list, tuple, dict)):
            if depth >= limit:
                return True
            stack.extend((v, depth + 1) for v in (item.values() if isinstance(item, dict) else item))
    return False


def is_ui_workflow(data: Any) -> bool:
    return isinstance(data, dict) and isinstance(data.get("nodes"), list) and "links" in data


# --------------------------------------------------------------------------- loading

def load_workflow(source: Any, registry: Mapping | None = None) -> Workflow:
    """The API-format workflow from a dict, a JSON/PNG path, file bytes, or JSON text."""
    return read_workflow(source, registry).prompt


def read_workflow(source: Any, registry: Mapping | None = None) -> LoadedWorkflow:
    """Like load_workflow, also returning the UI workflow (PNG `workflow` chunk / UI-format JSON)."""
    if isinstance(source, dict):
        return _from_data(source, "<dict>", registry)
    if isinstance(source, (bytes, bytearray)):
        return _from_bytes(bytes(source), "<bytes>", registry)
    if isinstance(source, str) and source.lstrip().startswith("{"):
        return _from_data(_parse_json(source, "<json text>"), "<json text>", registry)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        shown = str(path) if len(str(path)) <= 200 else str(path)[:200] + "..."
        try:
            if not path.is_file():
                raise MissingFileError(f"workflow file not found: {shown} (expected a .json workflow or a .png "
                                       f"saved by arnodes/ComfyUI)")
            data = path.read_bytes()
        except (OSError, ValueError) as exc:  # name too long, NUL byte, permission denied, ...
            if isinstance(exc, ArnodesError):
                raise
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise WorkflowError(f"cannot read the workflow file {shown}: {reason}") from None
        return _from_bytes(data, str(path), registry)
    raise WorkflowError(f"cannot load a workflow from {type(source).__name__}; "
                        f"pass a dict, a path to a .json/.png file, or file bytes")


def _from_bytes(data: bytes, origin: str, registry: Mapping | None) -> LoadedWorkflow:
    if data.startswith(_PNG_SIGNATURE):
        return _from_png(data, origin, registry)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise WorkflowError(f"{origin}: neither a PNG nor UTF-8 JSON ({exc.reason} at byte {exc.start})") from None
    return _from_data(_parse_json(text, origin), origin, registry)


def _parse_json(text: str, origin: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise WorkflowError(f"{origin}: not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise WorkflowError(f"{origin}: JSON nested too deeply to read") from None


def _from_data(data: Any, origin: str, registry: Mapping | None, ui: dict | None = None) -> LoadedWorkflow:
    if is_ui_workflow(data):
        if registry is None:
            raise WorkflowError(f"{origin} is a ComfyUI UI-format workflow; converting it needs the node "
                                f"registry. {_EXPORT_HINT}")
        if _too_deep(data, MAX_NESTING + 8):
            raise WorkflowError(f"{origin}: the UI-format workflow is nested too deeply. {_EXPORT_HINT}")
        try:
            return LoadedWorkflow(ui_to_api(data, registry, origin), data, origin)
        except ArnodesError:
            raise
        except (TypeError, ValueError, KeyError, AttributeError, IndexError) as exc:
            # a field of the wrong shape (a list where an id belongs, ...): the file is malformed
            raise WorkflowError(f"{origin}: malformed UI-format workflow ({type(exc).__name__}: {exc}). "
                                f"{_EXPORT_HINT}") from None
    return LoadedWorkflow(normalize_workflow(data, origin), ui, origin)


def _from_png(data: bytes, origin: str, registry: Mapping | None) -> LoadedWorkflow:
    chunks = read_png_text(data, origin)
    ui = None
    if "workflow" in chunks:
        try:
            ui = json.loads(chunks["workflow"])
        except json.JSONDecodeError:
            logger.warning("%s: ignoring the 'workflow' text chunk, which is not valid JSON", origin)
    if "prompt" in chunks:
        prompt = _parse_json(chunks["prompt"], f"{origin} ('prompt' chunk)")
        return _from_data(prompt, f"{origin} ('prompt' chunk)", registry, ui if isinstance(ui, dict) else None)
    if is_ui_workflow(ui):
        return _from_data(ui, f"{origin} ('workflow' chunk)", registry)
    raise WorkflowError(f"{origin}: the PNG has no embedded workflow (no 'prompt' text chunk); only images "
                        f"saved by arnodes or ComfyUI's SaveImage carry one")


def read_png_text(data: bytes, origin: str = "<png>") -> dict[str, str]:
    """All text chunks of a PNG as {keyword: text}; the first chunk wins on duplicate keywords."""
    if not data.startswith(_PNG_SIGNATURE):
        raise WorkflowError(f"{origin}: not a PNG file")
    out: dict[str, str] = {}
    pos = len(_PNG_SIGNATURE)
    while pos < len(data):
        if pos + 12 > len(data):
            raise WorkflowError(f"{origin}: truncated PNG (incomplete chunk at byte {pos})")
        length, ctype = struct.unpack(">I4s", data[pos:pos + 8])
        end = pos + 8 + length
        if end + 4 > len(data):
            raise WorkflowError(f"{origin}: truncated PNG ({ctype!r} chunk at byte {pos} runs past the end)")
        body = data[pos + 8:end]
        (crc,) = struct.unpack(">I", data[end:end + 4])
        if zlib.crc32(ctype + body) != crc:
            raise WorkflowError(f"{origin}: corrupt PNG (bad CRC in {ctype.decode('latin-1')!r} chunk)")
        if ctype in (b"tEXt", b"zTXt", b"iTXt"):
            key, text = _text_chunk(ctype, body, origin)
            out.setdefault(key, text)
        elif ctype == b"IEND":
            break
        pos = end + 4
    return out


def _text_chunk(ctype: bytes, body: bytes, origin: str) -> tuple[str, str]:
    key, _, rest = body.partition(b"\0")
    keyword = key.decode("latin-1")
    if ctype == b"tEXt":
        return keyword, _decode_latin1_or_utf8(rest)
    if ctype == b"zTXt":
        return keyword, _decode_latin1_or_utf8(_inflate(rest[1:], origin, keyword))
    if len(rest) < 2:
        raise WorkflowError(f"{origin}: malformed iTXt chunk {keyword!r}")
    compressed, rest = rest[0], rest[2:]
    _lang, _, rest = rest.partition(b"\0")
    _translated, _, text = rest.partition(b"\0")
    if compressed:
        text = _inflate(text, origin, keyword)
    try:
        return keyword, text.decode("utf-8")
    except UnicodeDecodeError:
        raise WorkflowError(f"{origin}: iTXt chunk {keyword!r} is not valid UTF-8") from None


def _decode_latin1_or_utf8(raw: bytes) -> str:
    # The PNG spec says Latin-1, but several tools write UTF-8 into tEXt; ASCII JSON reads the same either way.
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _inflate(raw: bytes, origin: str, keyword: str) -> bytes:
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(raw, _MAX_TEXT_BYTES)
    except zlib.error as exc:
        raise WorkflowError(f"{origin}: cannot decompress text chunk {keyword!r}: {exc}") from None
    if inflater.unconsumed_tail:
        raise WorkflowError(f"{origin}: text chunk {keyword!r} is larger than {_MAX_TEXT_BYTES} bytes")
    return out


# --------------------------------------------------------------------------- UI format

_IGNORED_UI_TYPES = frozenset({"Note", "MarkdownNote"})
_CONTROL_VALUES = frozenset({"fixed", "increment", "decrement", "randomize"})
_MODE_MUTED, _MODE_BYPASS = 2, 4
_PRIMITIVE = object()  # marks a link whose value is the target widget's own value


def ui_to_api(ui: dict, registry: Mapping, origin: str = "workflow") -> Workflow:
    """Convert a ComfyUI UI-format workflow to API format (rules in the module docstring)."""
    nodes = {str(n.get("id")): n for n in ui["nodes"] if isinstance(n, dict)}
    links = _ui_links(ui.get("links") or [], origin)
    skip = {"Reroute", "PrimitiveNode", *_IGNORED_UI_TYPES}
    unknown = sorted({str(n.get("type")) for n in nodes.values()
                      if n.get("type") not in skip and n.get("type") not in registry
                      and n.get("mode", 0) != _MODE_MUTED})
    if unknown:
        raise UnknownNodeError(f"{origin}: cannot convert the UI-format workflow: unknown node type(s) "
                               f"{', '.join(map(repr, unknown))}. {_EXPORT_HINT}")

    def source(link_id: Any, depth: int = 0) -> Any:
        if depth > 64:
            raise WorkflowError(f"{origin}: reroute/bypass chain through link {link_id!r} loops. {_EXPORT_HINT}")
        if link_id not in links:
            raise WorkflowError(f"{origin}: link {link_id!r} is missing from the links table. {_EXPORT_HINT}")
        origin_id, slot = links[link_id]
        node = nodes.get(origin_id)
        if node is None or node.get("mode", 0) == _MODE_MUTED:
            return None
        if node.get("type") == "PrimitiveNode":
            return _PRIMITIVE
        if node.get("type") == "Reroute" or node.get("mode", 0) == _MODE_BYPASS:
            outs = node.get("outputs") or []
            want = outs[slot].get("type") if slot < len(outs) and isinstance(outs[slot], dict) else None
            for inp in node.get("inputs") or []:
                if inp.get("link") is not None and (node.get("type") == "Reroute" or inp.get("type") == want):
                    return source(inp["link"], depth + 1)
            return None
        return [origin_id, slot]

    api: Workflow = {}
    for node_id, node in nodes.items():
        if node.get("type") in skip or node.get("mode", 0) in (_MODE_MUTED, _MODE_BYPASS):
            continue
        spec = registry[node["type"]].SPEC
        linked: dict[str, Any] = {}
        for inp in node.get("inputs") or []:
            if not isinstance(inp, dict) or inp.get("link") is None:
                continue
            src = source(inp["link"])
            if src is None or src is _PRIMITIVE:
                continue
            widget = inp.get("widget")
            name = widget.get("name") if isinstance(widget, dict) else inp.get("name")
            linked[str(name)] = src
        inputs = _ui_widget_values(node_id, spec, node.get("widgets_values"), set(linked), origin)
        inputs.update(linked)
        api[node_id] = {"class_type": spec.class_type, "inputs": inputs,
                        "_meta": {"title": str(node.get("title") or spec.display_name)}}
    return normalize_workflow(api, origin)


def _ui_links(raw: Any, origin: str) -> dict[Any, tuple[str, int]]:
    """{link_id: (origin node id, origin slot)} from list rows or dict rows."""
    out: dict[Any, tuple[str, int]] = {}
    if not isinstance(raw, list):
        raise WorkflowError(f"{origin}: 'links' must be a list. {_EXPORT_HINT}")
    for row in raw:
        if isinstance(row, list) and len(row) >= 5:
            link_id, origin_id, slot = row[0], row[1], row[2]
        elif isinstance(row, dict) and {"id", "origin_id", "origin_slot"} <= row.keys():
            link_id, origin_id, slot = row["id"], row["origin_id"], row["origin_slot"]
        else:
            raise WorkflowError(f"{origin}: unreadable entry in 'links': {row!r:.200}. {_EXPORT_HINT}")
        if isinstance(slot, bool) or not isinstance(slot, int) or slot < 0:
            raise WorkflowError(f"{origin}: link {link_id!r:.40} has origin slot {slot!r:.40}; a slot is an "
                                f"integer >= 0. {_EXPORT_HINT}")
        if not isinstance(link_id, (int, str)) or not isinstance(origin_id, (int, str)):
            raise WorkflowError(f"{origin}: unreadable entry in 'links': {row!r:.200}. {_EXPORT_HINT}")
        out[link_id] = (str(origin_id), slot)
    return out


def _ui_widget_values(node_id: str, spec: Any, values: Any, linked: set[str], origin: str) -> dict[str, Any]:
    widgets = list(spec.widget_inputs)
    if values is None:
        values = []
    if isinstance(values, dict):
        return {w.name: values[w.name] for w in widgets if w.name in values}
    if not isinstance(values, list):
        raise WorkflowError(f"{origin}: node {node_id} ({spec.class_type}): 'widgets_values' must be a list")
    for targets in (widgets, [w for w in widgets if w.name not in linked]):
        assigned = _assign_in_order(targets, values)
        if assigned is not None:
            return {k: v for k, v in assigned.items() if k not in linked}
    names = [w.name for w in widgets]
    raise WorkflowError(f"{origin}: node {node_id} ({spec.class_type}): {len(values)} widget value(s) {values!r} "
                        f"cannot be matched to its widget inputs {names}. {_EXPORT_HINT}")


def _assign_in_order(widgets: list, values: list) -> dict[str, Any] | None:
    out: dict[str, Any] = {}
    i = 0
    for w in widgets:
        if i >= len(values):
            return None
        out[w.name] = values[i]
        i += 1
        if (w.type == "INT" and w.name.endswith("seed") and i < len(values)
                and isinstance(values[i], str) and values[i] in _CONTROL_VALUES):
            i += 1  # ComfyUI's control_after_generate widget
    return out


# --------------------------------------------------------------------------- overrides / saving

_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})


def apply_overrides(workflow: Any, overrides: Iterable[str], registry: Mapping) -> Workflow:
    """A copy of `workflow` with each "NODE_ID.INPUT=VALUE" applied (the CLI's `--set`)."""
    from ..nodes.base import validate_widget_value

    wf = normalize_workflow(workflow)
    for item in overrides:
        target, eq, raw = str(item).partition("=")
        node_id, dot, name = target.strip().rpartition(".")
        if not eq or not dot or not node_id or not name:
            raise WorkflowError(f"bad override {item!r}: expected NODE_ID.INPUT=VALUE, e.g. 3.seed=42")
        if node_id not in wf:
            raise UnknownNodeError(f"override {item!r}: no node {node_id!r} in the workflow; "
                                   f"node ids: {', '.join(sorted(wf, key=id_order_key))}")
        class_type = wf[node_id]["class_type"]
        if class_type not in registry:
            raise UnknownNodeError(f"override {item!r}: node {node_id} has unknown class_type {class_type!r}")
        spec = registry[class_type].SPEC.input(name)
        if spec is None:
            names = [i.name for i in registry[class_type].SPEC.widget_inputs]
            raise WorkflowError(f"override {item!r}: node {node_id} ({class_type}) has no input {name!r}; "
                                f"inputs that can be set: {', '.join(names) or '(none)'}")
        value = _coerce(spec, raw, f"override {item!r}: node {node_id} ({class_type}) input {name!r}")
        reason = validate_widget_value(spec, value)
        if reason is not None:
            raise WorkflowError(f"override {item!r}: node {node_id} ({class_type}) input {name!r} {reason}")
        wf[node_id]["inputs"][name] = value
    return wf


def _coerce(spec: Any, raw: str, where: str) -> Any:
    t = spec.type
    text = raw.strip()
    try:
        if t == "INT":
            return int(text)
        if t == "FLOAT":
            value = float(text)
            if not math.isfinite(value):
                raise ValueError(text)
            return value
    except ValueError:
        kind = "an integer" if t == "INT" else "a finite number"
        raise WorkflowError(f"{where} expects {kind}, got {raw!r}") from None
    if t == "BOOLEAN":
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise WorkflowError(f"{where} expects true or false, got {raw!r}")
    if t in ("STRING", "COMBO"):
        return raw
    if t == "*":
        try:
            return json.loads(raw)
        except json.JSONDecodeError:
            return raw
    raise WorkflowError(f"{where} is a {t} input, which takes a link to another node, not a value")


def id_order_key(node_id: str) -> tuple[int, int | str]:
    """Natural order for node ids: "2" before "10", numeric ids before others."""
    return (0, int(node_id)) if node_id.isascii() and node_id.isdigit() else (1, node_id)


def save_workflow_json(path: str | os.PathLike, workflow: Any) -> Path:
    """Write `workflow` as indented JSON atomically (temp file + os.replace); never half-written."""
    path = Path(path)
    text = json.dumps(workflow, indent=2, ensure_ascii=False) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
