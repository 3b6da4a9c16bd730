"""Run a validated workflow: topological order, cache, progress events, cancel, wrapped errors.

The node registry (class_type -> Node class) is an argument: the executor never
imports the node modules, so it stays torch-free and testable with stub nodes.

Node work runs on the process's compute thread (engine/compute_thread.py) when a run is asked for
off the main thread: a server's many request threads would otherwise each grow their own CPU worker
teams (a CLI's run stays on its main thread).
Batchable nodes are the exception: they wait for company on their own thread, and the batcher hands
the batch it forms to the compute thread.
"""
from __future__ import annotations

import logging
import threading
import time
import uuid
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from ..engine import arrivals, compute_thread
from ..engine.errors import CancelledError
from ..engine.limits import check_node_count
from .cache import Cache, CacheEntry, LRUCache, node_key
from .errors import NodeExecutionError, UnknownNodeError, ValidationError
from .validate import ancestors, dependencies, topological_order, validate
from .workflow import Workflow, id_order_key, is_link, normalize_workflow

logger = logging.getLogger(__name__)

EVENT_KINDS = ("start", "node_start", "node_cached", "node_done", "progress", "error", "done")


@dataclass(frozen=True)
class Event:
    """One progress report; `step`/`total` are set for kind == "progress"."""

    kind: str
    node_id: str | None = None
    class_type: str | None = None
    step: int | None = None
    total: int | None = None
    message: str = ""


@dataclass
class RunResult:
    """Outputs of every node evaluated in the run, UI payloads, and what ran vs. came from cache."""

    outputs: dict[str, tuple] = field(default_factory=dict)
    ui: dict[str, dict] = field(default_factory=dict)
    executed: list[str] = field(default_factory=list)
    cached: list[str] = field(default_factory=list)


class Executor:
    """Runs workflows against `registry`; keeps `cache` (default LRUCache(64)) across runs."""

    def __init__(self, registry: Mapping[str, type], cache: Cache | None = None):
        self.registry = registry
        self.cache: Cache = LRUCache(64) if cache is None else cache

    def run(self, workflow: Any, *, input_dir: str | Path, output_dir: str | Path,
            extra_pnginfo: dict | None = None, on_event: Callable[[Event], None] | None = None,
            cancel: threading.Event | None = None, outputs_wanted: Iterable[str] | None = None) -> RunResult:
        """Validate (raising ValidationError before anything runs), then execute what is needed.

        Needed = `outputs_wanted` (node ids) if given, else the output nodes
        (SPEC.output_node), else every node; plus everything they read from.
        """
        wf = normalize_workflow(workflow)
        check_node_count(len(wf))
        compute_thread.enable()
        problems = validate(wf, self.registry)
        if problems:
            raise ValidationError(problems)
        deps = dependencies(wf)
        order = topological_order(deps, ancestors(deps, self._targets(wf, outputs_wanted)))
        emit = on_event or (lambda event: None)
        emit(Event("start", message=f"{len(order)} node(s) to evaluate"))
        run = _Run(self, wf, Path(input_dir), Path(output_dir), extra_pnginfo, emit, cancel)
        done: set[str] = set()
        batchable_left = sum(1 for n in order if self._batchable(wf, n))
        with ExitStack() as announced:  # the run is on its way to the batcher until its last batchable node
            announced.enter_context(arrivals.expecting(1 if batchable_left else 0))
            for node_id in order:
                if node_id in done:
                    continue
                group = self._side_by_side(node_id, order, deps, done, wf)
                if len(group) == 1:
                    run.evaluate(node_id)
                else:
                    with arrivals.expecting(len(group) - 1):
                        run.evaluate_together(group)
                done.update(group)
                batchable_left -= sum(1 for n in group if self._batchable(wf, n))
                if batchable_left == 0:
                    announced.close()
        emit(Event("done", message=f"{len(run.result.executed)} executed, {len(run.result.cached)} cached"))
        return run.result

    def _side_by_side(self, node_id: str, order: list[str], deps: Mapping[str, set[str]], done: set[str],
                      wf: Workflow) -> list[str]:
        """``node_id``, and when it is batchable every other batchable node ready now (all it reads from
        done): they run at once so that the engine can batch them."""
        if not self._batchable(wf, node_id):
            return [node_id]
        return [node_id] + [n for n in order if n != node_id and n not in done and self._batchable(wf, n)
                            and set(deps.get(n, ())) <= done]

    def _batchable(self, wf: Workflow, node_id: str) -> bool:
        """Whether the node submits to the engine's batcher (it waits there for other requests)."""
        return bool(getattr(self.registry[wf[node_id]["class_type"]].SPEC, "batchable", False))

    def _targets(self, wf: Workflow, outputs_wanted: Iterable[str] | None) -> list[str]:
        if outputs_wanted is not None:
            wanted = [str(n) for n in outputs_wanted]
            missing = [n for n in wanted if n not in wf]
            if missing:
                raise UnknownNodeError(f"outputs_wanted names node(s) {', '.join(missing)} that are not in the "
                                       f"workflow; node ids: {', '.join(sorted(wf, key=id_order_key))}")
            return wanted
        outputs = [n for n, node in wf.items() if self.registry[node["class_type"]].SPEC.output_node]
        return outputs or list(wf)


class _Run:
    """State of one run: values and cache keys so far, the nonce for impure nodes."""

    def __init__(self, executor: Executor, wf: Workflow, input_dir: Path, output_dir: Path,
                 extra_pnginfo: dict | None, emit: Callable[[Event], None], cancel: threading.Event | None):
        self.registry, self.cache = executor.registry, executor.cache
        self.wf, self.input_dir, self.output_dir = wf, input_dir, output_dir
        self.extra_pnginfo, self.emit, self.cancel = extra_pnginfo, emit, cancel
        self.nonce = uuid.uuid4().hex
        self.values: dict[str, tuple] = {}
        self.keys: dict[str, str] = {}
        self.volatile: set[str] = set()  # impure nodes and everything downstream of one
        self.result = RunResult()

    def evaluate(self, node_id: str) -> None:
        from ..nodes.base import ExecutionContext

        class_type = self.wf[node_id]["class_type"]
        cls = self.registry[class_type]
        spec = cls.SPEC
        if self.cancel is not None and self.cancel.is_set():
            err = CancelledError(f"cancelled before node {node_id} ({class_type}) ran")
            err.node_id, err.class_type = node_id, class_type
            self.emit(Event("error", node_id, class_type, message=str(err)))
            raise err

        def on_progress(step: int, total: int) -> None:
            self.emit(Event("progress", node_id, class_type, step=step, total=total))

        ctx = ExecutionContext(node_id, class_type, self.input_dir, self.output_dir, self.wf,
                               self.extra_pnginfo, on_progress, self.cancel)
        kwargs, literals, links = self._inputs(node_id, spec)
        volatile = not spec.pure or any(src in self.volatile for src, _ in links.values())
        try:
            key = node_key(class_type, literals, {n: (self.keys[s], i) for n, (s, i) in links.items()},
                           str(cls.fingerprint(ctx, **kwargs)), self.nonce if volatile else None)
            entry = None if volatile else self.cache.get(key)
            if entry is not None:
                self.emit(Event("node_cached", node_id, class_type))
                self.result.cached.append(node_id)
            else:
                self.emit(Event("node_start", node_id, class_type))
                started = time.perf_counter()
                raw = (cls.execute(ctx, **kwargs) if spec.batchable  # it hands its batch to the thread itself
                       else compute_thread.run(cls.execute, ctx, **kwargs))
                entry = _as_entry(raw, spec)
                logger.debug("node %s (%s) ran in %.3fs", node_id, class_type, time.perf_counter() - started)
                if not volatile:
                    self.cache.set(key, entry)
                self.result.executed.append(node_id)
                self.emit(Event("node_done", node_id, class_type))
        except CancelledError as exc:
            self.emit(Event("error", node_id, class_type, message=str(exc)))
            if getattr(exc, "node_id", None) is not None:
                raise
            named = CancelledError(f"node {node_id} ({class_type}): {exc or 'cancelled'}")
            named.node_id, named.class_type = node_id, class_type
            raise named from exc
        except NodeExecutionError as exc:  # already wrapped (a nested run): wrap only once
            self.emit(Event("error", node_id, class_type, message=str(exc)))
            raise
        except Exception as exc:
            err = NodeExecutionError(node_id, class_type, exc)
            logger.debug("node %s (%s) failed", node_id, class_type, exc_info=True)
            self.emit(Event("error", node_id, class_type, message=str(err)))
            raise err from exc
        self.keys[node_id] = key
        if volatile:
            self.volatile.add(node_id)
        self.values[node_id] = entry.outputs
        self.result.outputs[node_id] = entry.outputs
        if entry.ui:
            self.result.ui[node_id] = entry.ui

    def evaluate_together(self, node_ids: list[str]) -> None:
        """Evaluate independent nodes in threads; results are recorded in ``node_ids`` order, and the
        first failure (in that order) is raised once all have finished. Where node work runs inline on the
        compute thread (a nested run there) they go one by one: their batches would need this thread."""
        if compute_thread.on_compute_thread():
            for node_id in node_ids:
                self.evaluate(node_id)
            return
        errors: dict[str, BaseException] = {}
        executed_before, cached_before = len(self.result.executed), len(self.result.cached)

        def one(node_id: str) -> None:
            try:
                self.evaluate(node_id)
            except BaseException as exc:  # noqa: BLE001 - re-raised below, in order
                errors[node_id] = exc
        threads = [threading.Thread(target=one, args=(n,), name=f"node-{n}") for n in node_ids]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for kind, before in (("executed", executed_before), ("cached", cached_before)):
            ids = getattr(self.result, kind)
            ids[before:] = sorted(ids[before:], key=node_ids.index)
        for node_id in node_ids:
            if node_id in errors:
                raise errors[node_id]

    def _inputs(self, node_id: str, spec: Any) -> tuple[dict, dict, dict[str, tuple[str, int]]]:
        """(kwargs for execute, literal inputs, {name: (source node id, output index)})."""
        given = self.wf[node_id]["inputs"]
        kwargs: dict[str, Any] = {}
        literals: dict[str, Any] = {}
        links: dict[str, tuple[str, int]] = {}
        for ispec in spec.inputs:
            value = given.get(ispec.name, ispec.default)
            if ispec.name in given and is_link(value):
                src, index = value
                kwargs[ispec.name] = self.values[src][index]
                links[ispec.name] = (src, index)
                continue
            if ispec.type == "FLOAT" and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            kwargs[ispec.name] = literals[ispec.name] = value
        return kwargs, literals, links


def _as_entry(raw: Any, spec: Any) -> CacheEntry:
    """Normalise what execute returned; a wrong shape is a node bug, reported with the node."""
    from ..nodes.base import NodeResult

    ui = None
    if isinstance(raw, NodeResult):
        outputs, ui = raw.outputs, raw.ui
    elif raw is None and not spec.outputs:
        outputs = ()
    else:
        outputs = raw
    if not isinstance(outputs, (tuple, list)):
        raise TypeError(f"execute returned {type(raw).__name__}; expected a tuple of "
                        f"{len(spec.outputs)} output(s) or a NodeResult")
    if len(outputs) != len(spec.outputs):
        raise TypeError(f"execute returned {len(outputs)} output(s) but the spec declares "
                        f"{len(spec.outputs)} ({', '.join(o.name for o in spec.outputs) or 'none'})")
    if ui is not None and not isinstance(ui, dict):
        raise TypeError(f"NodeResult.ui must be a dict or None, got {type(ui).__name__}")
    return CacheEntry(tuple(outputs), ui)


def run_workflow(workflow: Any, registry: Mapping[str, type], *, cache: Cache | None = None,
                 **run_kwargs: Any) -> RunResult:
    """One-shot convenience: `Executor(registry, cache).run(workflow, **run_kwargs)`."""
    return Executor(registry, cache).run(workflow, **run_kwargs)
