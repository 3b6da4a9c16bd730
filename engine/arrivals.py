"""Who is on the way to the request batcher: runs announce themselves before they reach it.

The batcher (batching.py) cannot see requests that are still on their way (a workflow's earlier
nodes: loading, conditioning); without a hint, the first to arrive must wait its whole window in
case company follows. A run that will submit says so here first (the executor does, for workflows
with batchable nodes, until its last one has run; the ComfyUI pack around each generate node), so a
group whose expected members have all arrived can go at once. Torch-free: the graph layer imports it.
"""
from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Iterator

_lock = threading.Lock()
_expected = 0  # requests announced and not yet finished
_last_announced = 0.0  # time.monotonic() of the latest announcement


@contextmanager
def expecting(requests: int = 1) -> Iterator[None]:
    """While open, ``requests`` more requests may reach the batcher."""
    global _expected, _last_announced
    if requests == 0:  # nothing on its way: no one's grace starts over
        yield
        return
    with _lock:
        _expected += requests
        _last_announced = time.monotonic()
    try:
        yield
    finally:
        with _lock:
            _expected -= requests


def expected() -> tuple[int, float]:
    """(requests announced and still in flight, when the latest was announced)."""
    with _lock:
        return _expected, _last_announced
