"""One thread for a server's tensor work, so that the CPU kernels keep one warm team of OpenMP workers.

Why: torch's CPU kernels parallelise with OpenMP, and every thread that runs a parallel op gets its
own team of OpenMP workers. Once a process holds more OpenMP workers than cores, libgomp stops
spinning between parallel regions ("throttled"), so every op after that pays a sleeping worker's
wake-up. A server that runs requests on many threads (the app's queue, the executor's side-by-side
nodes) hits this on every request. Measured on the 2-core CPU with the bundled model: a decode took
15 ms on a second thread that had its own team against 6.5 ms when one thread did all the tensor
work, and a batch-8 generation took 208 ms against 146 ms.

So the executor hands each node's work to this one thread, and the request batcher hands it its
batch runs. The requesting threads only wait (and do their waiting for company outside it). A
caller already on this thread runs inline, so nested work cannot deadlock on itself. The main
thread keeps its own work too: a CLI run or a script already does everything there (one team), and
Ctrl-C then still lands where the work is, so an interrupted write cleans up after itself. Until
``enable()`` (the executor calls it) everything runs inline, as before: ComfyUI and library users
keep calling from their own threads.
"""
from __future__ import annotations

import contextvars
import queue
import threading
from concurrent.futures import Future
from typing import Any, Callable, TypeVar

T = TypeVar("T")
THREAD_NAME = "arnodes-compute"


class ComputeThread:
    """A daemon thread running submitted calls one at a time, each in its submitter's context
    (contextvars: e.g. the app's per-request progress tracking)."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._serve, name=THREAD_NAME, daemon=True)
        self.thread.start()

    def submit(self, fn: Callable[..., T], args: tuple, kwargs: dict) -> T:
        done: Future = Future()
        self._jobs.put((contextvars.copy_context(), fn, args, kwargs, done))
        return done.result()

    def _serve(self) -> None:
        while True:
            context, fn, args, kwargs, done = self._jobs.get()
            try:
                done.set_result(context.run(fn, *args, **kwargs))
            except BaseException as exc:  # noqa: BLE001 - re-raised in the submitting thread
                done.set_exception(exc)
            del context, fn, args, kwargs, done  # drop references to the finished job's tensors


_worker: ComputeThread | None = None
_start_lock = threading.Lock()


def enable() -> None:
    """Start the process's compute thread (idempotent); from now on ``run`` hands work to it."""
    global _worker
    with _start_lock:
        if _worker is None:
            _worker = ComputeThread()


def on_compute_thread() -> bool:
    return _worker is not None and threading.current_thread() is _worker.thread


def _runs_inline() -> bool:
    """Whether ``run`` calls its function right here: no compute thread, or this is it, or the main thread."""
    here = threading.current_thread()
    return _worker is None or here is _worker.thread or here is threading.main_thread()


def run(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` on the compute thread (inline when disabled, already there, or on the main thread); its exception is
    raised here. Never call this while holding a lock that work on the compute thread may take: the
    lock's holder would wait for the thread, and the thread for the lock."""
    if _runs_inline():
        return fn(*args, **kwargs)
    return _worker.submit(fn, args, kwargs)
