"""The compute thread: one thread runs the submitted work, in the submitter's context, and raises
the submitter's errors where they were asked for."""
from __future__ import annotations

import contextvars
import threading

import pytest

from arnodes.engine import compute_thread
from arnodes.engine.compute_thread import ComputeThread

REQUEST = contextvars.ContextVar("request", default=None)


def test_work_runs_on_the_thread_in_the_callers_context_and_in_order():
    worker = ComputeThread()
    seen = []

    def job(i: int) -> int:
        seen.append((i, threading.current_thread() is worker.thread, REQUEST.get()))
        return i * 10

    REQUEST.set("request-7")
    assert [worker.submit(job, (i,), {}) for i in range(3)] == [0, 10, 20]
    assert seen == [(0, True, "request-7"), (1, True, "request-7"), (2, True, "request-7")]


def test_an_error_is_raised_in_the_caller_and_the_thread_goes_on():
    worker = ComputeThread()

    def fail() -> None:
        raise ValueError("bad shape (3, 4)")
    with pytest.raises(ValueError, match="bad shape"):
        worker.submit(fail, (), {})
    assert worker.submit(lambda a, b=0: a + b, (2,), {"b": 3}) == 5


def _from_a_request_thread(fn):
    out = []
    caller = threading.Thread(target=lambda: out.append(fn()), name="request")
    caller.start()
    caller.join(timeout=30)
    return out[0]


def test_run_hands_work_over_once_enabled_and_runs_inline_on_the_thread_itself():
    compute_thread.enable()
    first = _from_a_request_thread(lambda: compute_thread.run(threading.current_thread))
    compute_thread.enable()  # idempotent: still the same thread
    assert _from_a_request_thread(lambda: compute_thread.run(threading.current_thread)) is first
    assert first.name == compute_thread.THREAD_NAME

    def outer() -> tuple[str, str]:
        return threading.current_thread().name, compute_thread.run(lambda: threading.current_thread().name)
    assert _from_a_request_thread(lambda: compute_thread.run(outer)) == (first.name, first.name)


def test_the_main_thread_keeps_its_own_work():
    compute_thread.enable()
    assert compute_thread.run(threading.current_thread) is threading.main_thread()
