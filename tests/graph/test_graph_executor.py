"""Executor: order, needed-node selection, events, cancel, error wrapping, caching."""
from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import graph_stubs as stubs  # noqa: E402

from arnodes.engine.errors import CancelledError  # noqa: E402
from arnodes.graph import (  # noqa: E402
    Executor, GraphBuilder, LRUCache, NodeExecutionError, NullCache, UnknownNodeError, ValidationError,
    run_workflow,
)

R = stubs.REGISTRY


@pytest.fixture(autouse=True)
def _reset_calls():
    stubs.CALLS.clear()


@pytest.fixture
def dirs(tmp_path):
    return {"input_dir": tmp_path / "in", "output_dir": tmp_path / "out"}


def chain(value=2, factor=3.0):
    g = GraphBuilder()
    a = g.node("Const", value=value)            # 1
    b = g.node("Add", a=a, b=10)                 # 2
    c = g.node("Scale", x=b.out(0), factor=factor)  # 3
    g.node("Sink", value=c.out(0))               # 4
    return g.build()


def test_builder_output():
    g = GraphBuilder()
    a = g.node("Const", value=1)
    g.node("Add", a=a.out(0))
    assert g.build() == {"1": {"class_type": "Const", "inputs": {"value": 1}},
                         "2": {"class_type": "Add", "inputs": {"a": ["1", 0]}}}


def test_topological_execution_and_results(dirs):
    wf = {"10": {"class_type": "Sink", "inputs": {"value": ["2", 0]}},
          "2": {"class_type": "Add", "inputs": {"a": ["1", 0], "b": ["3", 0]}},
          "3": {"class_type": "Const", "inputs": {"value": 5}},
          "1": {"class_type": "Const", "inputs": {"value": 4}}}
    result = run_workflow(wf, R, **dirs)
    assert result.executed == ["1", "3", "2", "10"] == stubs.CALLS
    assert result.outputs["2"] == (9,)
    assert result.ui == {"10": {"values": [9]}}


def test_only_nodes_needed_by_output_nodes_run(dirs):
    wf = chain()
    wf["9"] = {"class_type": "Const", "inputs": {"value": 7}}  # dangling: not needed by the Sink
    assert Executor(R).run(wf, **dirs).executed == ["1", "2", "3", "4"]


def test_outputs_wanted_and_all_nodes_without_output_node(dirs):
    wf = chain()
    assert Executor(R).run(wf, outputs_wanted=["2"], **dirs).executed == ["1", "2"]
    del wf["4"]
    assert Executor(R).run(wf, **dirs).executed == ["1", "2", "3"]
    with pytest.raises(UnknownNodeError, match="42"):
        Executor(R).run(wf, outputs_wanted=["42"], **dirs)


def test_int_literal_reaches_float_input_as_float(dirs):
    assert run_workflow(chain(factor=2), R, **dirs).outputs["3"] == (24.0,)


def test_validation_runs_before_anything(dirs):
    wf = chain()
    wf["3"]["inputs"]["mode"] = "bad"
    with pytest.raises(ValidationError, match="node 3 \\(Scale\\) input 'mode'"):
        run_workflow(wf, R, **dirs)
    assert stubs.CALLS == []


def test_events(dirs):
    g = GraphBuilder()
    a = g.node("Const", value=1)
    s = g.node("Steps", x=a, steps=2)
    g.node("Sink", value=s)
    events = []
    Executor(R).run(g.build(), on_event=events.append, **dirs)
    got = [(e.kind, e.node_id, e.step) for e in events]
    assert got == [("start", None, None), ("node_start", "1", None), ("node_done", "1", None),
                   ("node_start", "2", None), ("progress", "2", 1), ("progress", "2", 2), ("node_done", "2", None),
                   ("node_start", "3", None), ("node_done", "3", None), ("done", None, None)]
    assert events[4].total == 2 and events[4].class_type == "Steps"


def test_failing_node_is_wrapped_once(dirs):
    g = GraphBuilder()
    a = g.node("Const", value=1)
    f = g.node("Fail", x=a)
    g.node("Sink", value=f)
    events = []
    with pytest.raises(NodeExecutionError) as info:
        Executor(R).run(g.build(), on_event=events.append, **dirs)
    err = info.value
    assert str(err) == "node 2 (Fail): internal error (ValueError: boom: x must be even)"
    assert err.internal, "a bare ValueError escaping a node is our bug, not bad input"
    assert (err.node_id, err.class_type) == ("2", "Fail")
    assert isinstance(err.__cause__, ValueError) and err.original is err.__cause__
    assert events[-1].kind == "error" and events[-1].node_id == "2"
    assert "3" not in stubs.CALLS


def test_typed_error_in_a_node_is_a_user_error(dirs):
    from arnodes.engine.errors import InvalidInputError

    class Picky(stubs.Node):
        SPEC = stubs.spec("Picky", [], [])

        @classmethod
        def execute(cls, ctx):
            raise InvalidInputError("input 'x': must be even")

    with pytest.raises(NodeExecutionError) as info:
        run_workflow({"1": {"class_type": "Picky", "inputs": {}}}, {"Picky": Picky}, **dirs)
    assert str(info.value) == "node 1 (Picky): input 'x': must be even"
    assert not info.value.internal


def test_wrong_output_count_names_the_node(dirs):
    class Bad(stubs.Node):
        SPEC = stubs.spec("Bad", [], [stubs.OutputSpec("a", stubs.INT), stubs.OutputSpec("b", stubs.INT)])

        @classmethod
        def execute(cls, ctx):
            return (1,)

    expected = r"node 1 \(Bad\): internal error \(TypeError: execute returned 1 output\(s\)"
    with pytest.raises(NodeExecutionError, match=expected):
        run_workflow({"1": {"class_type": "Bad", "inputs": {}}}, {"Bad": Bad}, **dirs)


def test_cancel_between_nodes(dirs):
    cancel = threading.Event()

    def on_event(event):
        if event.kind == "node_done" and event.node_id == "2":
            cancel.set()

    with pytest.raises(CancelledError, match=r"node 3 \(Scale\)"):
        Executor(R).run(chain(), on_event=on_event, cancel=cancel, **dirs)
    assert stubs.CALLS == ["1", "2"]


def test_cancel_through_progress(dirs):
    cancel = threading.Event()
    g = GraphBuilder()
    a = g.node("Const", value=1)
    s = g.node("Steps", x=a, steps=100)
    g.node("Sink", value=s)
    steps = []

    def on_event(event):
        if event.kind == "progress":
            steps.append(event.step)
            if event.step == 3:
                cancel.set()

    with pytest.raises(CancelledError, match=r"node 2 \(Steps\)") as info:
        Executor(R).run(g.build(), on_event=on_event, cancel=cancel, **dirs)
    assert steps == [1, 2, 3] and info.value.node_id == "2"
    assert not isinstance(info.value, NodeExecutionError)


# ----------------------------------------------------------------------------- caching

def test_unchanged_rerun_executes_nothing(dirs):
    ex = Executor(R)
    first = ex.run(chain(), **dirs)
    stubs.CALLS.clear()
    again = ex.run(chain(), **dirs)
    assert stubs.CALLS == [] and again.executed == []
    assert again.cached == ["1", "2", "3", "4"]
    assert again.outputs == first.outputs and again.ui == first.ui


def test_changed_widget_reexecutes_only_downstream(dirs):
    ex = Executor(R, LRUCache(16))
    ex.run(chain(factor=3.0), **dirs)
    stubs.CALLS.clear()
    result = ex.run(chain(factor=4.0), **dirs)
    assert stubs.CALLS == ["3", "4"] and result.cached == ["1", "2"]
    assert result.ui["4"] == {"values": [48.0]}


def test_explicit_default_shares_the_cache_entry(dirs):
    ex = Executor(R)
    ex.run(chain(), **dirs)
    stubs.CALLS.clear()
    wf = chain()
    wf["3"]["inputs"]["mode"] = "up"  # the default, now spelled out
    assert ex.run(wf, **dirs).executed == []


def test_null_cache_always_executes(dirs):
    ex = Executor(R, NullCache())
    ex.run(chain(), **dirs)
    assert ex.run(chain(), **dirs).executed == ["1", "2", "3", "4"]


def test_impure_node_always_reruns_with_its_dependents(dirs):
    g = GraphBuilder()
    n = g.node("Noise")
    a = g.node("Add", a=n)
    g.node("Sink", value=a)
    c = g.node("Const", value=1)
    g.node("Sink", value=c)
    ex = Executor(R)
    first = ex.run(g.build(), **dirs)
    second = ex.run(g.build(), **dirs)
    assert second.executed == ["1", "2", "3"] and second.cached == ["4", "5"]
    assert second.outputs["2"][0] == first.outputs["2"][0] + 1


def test_lru_evicts_oldest(dirs):
    ex = Executor(R, LRUCache(2))
    ex.run(chain(), **dirs)
    assert len(ex.cache) == 2
    assert ex.run(chain(), **dirs).cached == []  # "1" and "2" were evicted, so all recompute
    with pytest.raises(ValueError):
        LRUCache(0)


def test_fingerprint_is_part_of_the_key(dirs):
    stamp = {"v": "a"}

    class Reader(stubs.Node):
        SPEC = stubs.spec("Reader", [stubs.InputSpec("name", stubs.STRING, default="f")],
                          [stubs.OutputSpec("v", stubs.STRING)])

        @classmethod
        def execute(cls, ctx, name):
            stubs.CALLS.append(ctx.node_id)
            return (stamp["v"],)

        @classmethod
        def fingerprint(cls, ctx, name):
            return stamp["v"]

    reg = {**R, "Reader": Reader}
    wf = {"1": {"class_type": "Reader", "inputs": {}}, "2": {"class_type": "Sink", "inputs": {"value": ["1", 0]}}}
    ex = Executor(reg)
    ex.run(wf, **dirs)
    assert ex.run(wf, **dirs).executed == []
    stamp["v"] = "b"
    assert ex.run(wf, **dirs).executed == ["1", "2"]
