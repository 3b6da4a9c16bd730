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


def test_run_hands_work_over_once_enabled_and_runs_inline_on_the_thread_itself():
    compute_thread.enable()
    first = compute_thread.run(threading.current_thread)
    compute_thread.enable()  # idempotent: still the same thread
    assert compute_thread.run(threading.current_thread) is first is not threading.current_thread()

    def outer() -> tuple[str, str]:
        return threading.current_thread().name, compute_thread.run(lambda: threading.current_thread().name)
    assert compute_thread.run(outer) == (compute_thread.THREAD_NAME, compute_thread.THREAD_NAME)
    assert compute_thread.on_compute_thread() is False
