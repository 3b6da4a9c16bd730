"""The executor runs node work on the process's compute thread, whichever thread asks for the run;
batchable nodes wait on their own threads; a nested run on the compute thread cannot deadlock."""
from __future__ import annotations

import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import graph_stubs as stubs  # noqa: E402

from arnodes.engine import arrivals, compute_thread  # noqa: E402
from arnodes.graph import Executor, GraphBuilder  # noqa: E402
from arnodes.nodes.base import INT, InputSpec, Node, OutputSpec  # noqa: E402

THREADS: list[tuple[str, str]] = []  # (class_type, thread name) per execute
EXPECTED: list[tuple[str, int]] = []  # (class_type, requests announced to the batcher) per execute


class WhereAmI(Node):
    SPEC = stubs.spec("WhereAmI", [InputSpec("x", INT, default=0)], [OutputSpec("x", INT)])

    @classmethod
    def execute(cls, ctx, x):
        THREADS.append((cls.SPEC.class_type, threading.current_thread().name))
        EXPECTED.append((cls.SPEC.class_type, arrivals.expected()[0]))
        return (x,)


class Gather(Node):
    """Batchable (like ARGenerate): it hands its own work to the compute thread."""
    SPEC = stubs.spec("Gather", [InputSpec("x", INT, default=0)], [OutputSpec("x", INT)], batchable=True)

    @classmethod
    def execute(cls, ctx, x):
        THREADS.append(("Gather:waits", threading.current_thread().name))
        EXPECTED.append(("Gather", arrivals.expected()[0]))
        return (compute_thread.run(lambda: THREADS.append(("Gather:work", threading.current_thread().name)) or x),)


class Nested(Node):
    """Runs a workflow of two batchable nodes from inside a node (so on the compute thread)."""
    SPEC = stubs.spec("Nested", [InputSpec("x", INT, default=0)], [OutputSpec("x", INT)])

    @classmethod
    def execute(cls, ctx, x):
        g = GraphBuilder()
        a, b = g.node("Gather", x=x), g.node("Gather", x=x + 1)
        g.node("WhereAmI", x=a.out(0))
        g.node("WhereAmI", x=b.out(0))
        Executor(REGISTRY).run(g.build(), input_dir=ctx.input_dir, output_dir=ctx.output_dir)
        return (x,)


REGISTRY = {c.SPEC.class_type: c for c in (WhereAmI, Gather, Nested)}


def _run(workflow, tmp_path) -> None:
    Executor(REGISTRY).run(workflow, input_dir=tmp_path / "in", output_dir=tmp_path / "out")


def _run_off_main(workflow, tmp_path) -> None:
    """As a server's request thread asks for a run."""
    caller = threading.Thread(target=_run, args=(workflow, tmp_path), name="request", daemon=True)
    caller.start()
    caller.join(timeout=60)
    assert not caller.is_alive(), "the run did not finish"


def test_node_work_runs_on_one_compute_thread_from_any_calling_thread(tmp_path):
    THREADS.clear()
    g = GraphBuilder()
    g.node("WhereAmI", x=g.node("WhereAmI", x=1).out(0))
    workflow = g.build()
    callers = [threading.Thread(target=_run, args=(workflow, tmp_path), name=f"request-{i}") for i in range(3)]
    for t in callers:
        t.start()
    for t in callers:
        t.join(timeout=60)
    assert len(THREADS) == 6
    assert {name for _, name in THREADS} == {compute_thread.THREAD_NAME}


def test_batchable_nodes_wait_on_their_own_threads_and_hand_their_work_over(tmp_path):
    THREADS.clear()
    g = GraphBuilder()
    for i in range(3):
        g.node("WhereAmI", x=g.node("Gather", x=i).out(0))
    _run_off_main(g.build(), tmp_path)
    waits = [name for kind, name in THREADS if kind == "Gather:waits"]
    assert len(waits) == 3 and compute_thread.THREAD_NAME not in waits  # side by side, off the compute thread
    assert {name for kind, name in THREADS if kind != "Gather:waits"} == {compute_thread.THREAD_NAME}


def test_runs_announce_the_requests_their_batchable_nodes_will_bring(tmp_path):
    """The batcher stops waiting once every announced request is there: a run with batchable nodes
    announces one from its start, side-by-side batchable nodes one each, and withdraws once its last
    batchable node has run; a run without them announces none."""
    EXPECTED.clear()
    g = GraphBuilder()
    g.node("WhereAmI", x=g.node("Gather", x=g.node("WhereAmI", x=1).out(0)).out(0))
    _run_off_main(g.build(), tmp_path)
    assert EXPECTED == [("WhereAmI", 1), ("Gather", 1), ("WhereAmI", 0)]  # on its way, then withdrawn
    EXPECTED.clear()
    g = GraphBuilder()
    for i in range(3):
        g.node("WhereAmI", x=g.node("Gather", x=i).out(0))
    _run_off_main(g.build(), tmp_path)
    assert [n for kind, n in EXPECTED if kind == "Gather"] == [3, 3, 3]  # side by side: one each
    g = GraphBuilder()
    g.node("WhereAmI", x=g.node("WhereAmI", x=1).out(0))
    _run_off_main(g.build(), tmp_path)
    assert [n for kind, n in EXPECTED[-2:]] == [0, 0]
    assert arrivals.expected()[0] == 0


def test_a_run_asked_for_on_the_main_thread_keeps_its_node_work_there(tmp_path):
    THREADS.clear()
    g = GraphBuilder()
    for i in range(2):
        g.node("WhereAmI", x=g.node("Gather", x=i).out(0))
    _run(g.build(), tmp_path)  # pytest's main thread, as the CLI's
    main = threading.main_thread().name
    assert [name for kind, name in THREADS if kind == "WhereAmI"] == [main, main]
    # two batchable nodes ready at once wait side by side, off the main thread, and hand their work over
    assert {name for kind, name in THREADS if kind == "Gather:work"} == {compute_thread.THREAD_NAME}


def test_a_nested_run_on_the_compute_thread_finishes(tmp_path):
    THREADS.clear()
    g = GraphBuilder()
    g.node("Nested", x=5)
    done = threading.Thread(target=_run, args=(g.build(), tmp_path), daemon=True)
    done.start()
    done.join(timeout=30)
    assert not done.is_alive(), "a nested run deadlocked on the compute thread"
    assert [k for k, _ in THREADS].count("Gather:work") == 2
    assert {name for _, name in THREADS} == {compute_thread.THREAD_NAME}  # nested: all inline, one by one
