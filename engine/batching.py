"""Request batching: generate requests for one model that arrive together run as one batch.

Decoding at batch 8 reads the weights once per step, as batch 1 does, so eight requests run
together cost far less than eight in turn. Every front end (the app's queue, ComfyUI, the CLI,
scripts) reaches generation through the ``ARGenerate`` node, which submits here; nothing is
batched in the front ends themselves.

Each request keeps its own seed: the batch samples each request's rows from that request's own
generator (``sampling.RequestGenerators``), so an image is identical alone and inside a batch.
Only requests whose settings agree are batched (same model, sampling parameters, guidance, plain
decoding, no control or token canvas); anything else runs alone, as before.

How requests meet: the first to arrive waits ``window_s`` for company, and each request that joins
restarts that wait (up to ``MAX_WINDOWS`` windows in all), so a burst whose requests trickle in
through the front end's own work still meets. Runs that will reach this batcher say so first
(``arrivals.expecting``: the executor and the ComfyUI pack do); once every
announced request has arrived and ``grace_s`` passes with no new run or request, the group stops
waiting: a request alone in the server does not pay the window, nor does a burst after its last
member. Then the group takes the model's lock and runs everything queued for its settings (up to
``max_images``). Requests arriving while a batch runs queue behind the lock and go together in the
next batch, so under load batches form without any waiting. Where a compute thread runs
(compute_thread.py: the executor's front ends), the batch runs there: the requests wait for company
on their own threads and hand the batch over, lock included.
"""
from __future__ import annotations

import os
import threading
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field, replace
from typing import Any, Callable

from . import arrivals, compute_thread
from .conditioning import Conditioning
from .errors import InvalidInputError, LimitError
from .generate import DecodeOptions, TokenCanvas, generate, make_generator
from .sampling import RequestGenerators, SamplingParams

Progress = Callable[[int, int], None]
MAX_WINDOWS = 5  # a group waits at most this many windows for company, however many keep arriving
Reserve = Callable[[int], AbstractContextManager]  # images -> holds their working set in the memory budget


@dataclass(frozen=True)
class BatchSettings:
    """``max_images``: most images in one batch (a request larger than this runs alone);
    ``window_s``: how long a group waits for the next request (0 = never waits);
    ``grace_s``: how long it waits once every request announced in ``arrivals`` has arrived."""

    max_images: int = 16
    window_s: float = 0.02
    grace_s: float = 0.005

    def __post_init__(self) -> None:
        if self.max_images < 1:
            raise InvalidInputError(f"batch max_images must be >= 1, got {self.max_images}")
        if not 0 <= self.window_s <= 5:
            raise InvalidInputError(f"batch window must be in [0, 5] seconds, got {self.window_s}")
        if not 0 <= self.grace_s <= 5:
            raise InvalidInputError(f"batch grace must be in [0, 5] seconds, got {self.grace_s}")

    @classmethod
    def from_env(cls) -> "BatchSettings":
        """``ARNODES_BATCH_MAX`` (images; 1 turns batching off), ``ARNODES_BATCH_WINDOW_MS`` and
        ``ARNODES_BATCH_GRACE_MS``."""
        try:
            return cls(max_images=int(os.environ.get("ARNODES_BATCH_MAX", cls.max_images)),
                       window_s=float(os.environ.get("ARNODES_BATCH_WINDOW_MS", cls.window_s * 1000)) / 1000,
                       grace_s=float(os.environ.get("ARNODES_BATCH_GRACE_MS", cls.grace_s * 1000)) / 1000)
        except ValueError as e:
            raise InvalidInputError(f"ARNODES_BATCH_MAX / ARNODES_BATCH_WINDOW_MS / ARNODES_BATCH_GRACE_MS: {e}") \
                from None


@dataclass
class _Request:
    cond: Conditioning
    seed: int
    progress: Progress | None
    reserve: Reserve | None = None
    done: threading.Event = field(default_factory=threading.Event)
    result: TokenCanvas | None = None
    error: BaseException | None = None
    stats: dict[str, Any] = field(default_factory=dict)


def _settings_key(bundle, cond: Conditioning, params: SamplingParams) -> tuple:
    """Requests with equal keys can share a batch (the class ids and seeds may differ)."""
    return (id(bundle), params, cond.cfg, cond.schedule, cond.cfg_interval, cond.negative_class_ids is None,
            cond.style_ids is None)


def _merged(conds: list[Conditioning]) -> Conditioning:
    first = conds[0]

    def joined(attr: str):
        parts = [getattr(c, attr) for c in conds]
        return None if parts[0] is None else tuple(x for p in parts for x in p)
    return replace(first, class_ids=joined("class_ids"), negative_class_ids=joined("negative_class_ids"),
                   class_names=tuple(n for c in conds for n in c.class_names),
                   style_ids=joined("style_ids"), style_names=tuple(n for c in conds for n in c.style_names))


def _rows(canvas: TokenCanvas, start: int, stop: int) -> TokenCanvas:
    """A request's rows, without the batch's decoder input: convolutions over a larger batch round
    differently (1e-6), and decoding recomputes it from the tokens exactly as a solo run has it."""
    return TokenCanvas(canvas.family, canvas.tokenizer_id, [g[start:stop] for g in canvas.grids],
                       [k[start:stop] for k in canvas.known])


class GenerationBatcher:
    """Thread-safe; one per process (``default_batcher``), shared by every model."""

    def __init__(self, settings: BatchSettings | None = None) -> None:
        self.settings = settings or BatchSettings.from_env()
        self._lock = threading.Lock()
        self._pending: dict[tuple, list[_Request]] = {}
        self._opened: dict[tuple, tuple[float, float]] = {}  # group -> (first arrival, latest arrival)
        self.batches: list[int] = []  # requests per batch run, most recent last (bounded; for tests / stats)
        self._alone_running = 0  # requests running alone now: arrived, so no group waits for them

    def generate(self, bundle, lock: threading.RLock, cond: Conditioning, params: SamplingParams, seed: int,
                 progress: Progress | None = None, decode: DecodeOptions | None = None,
                 stats: dict | None = None, reserve: Reserve | None = None) -> TokenCanvas:
        """``generate(bundle, cond, params=, seed=)`` — possibly inside a batch with other requests.
        ``lock`` is the model's generation lock (one generation at a time per loaded model);
        ``reserve(images)`` holds the working set of the batch that runs (``ModelCache.reserve``).
        Callers announce their request first (``arrivals.expecting``, as the executor and the ComfyUI
        pack do); an unannounced one still batches, but may let a group go before announced company."""
        decode = decode or DecodeOptions()
        alone = (decode.strategy != "plain" or cond.control is not None or cond.text is not None
                 or cond.batch >= self.settings.max_images or self.settings.max_images == 1)
        if alone:
            with self._lock:
                self._alone_running += 1
            try:
                return compute_thread.run(self._alone, bundle, lock, cond, params, seed, progress, decode, stats,
                                          reserve)
            finally:
                with self._lock:
                    self._alone_running -= 1
        request = _Request(cond, seed, progress, reserve)
        key = _settings_key(bundle, cond, params)
        with self._lock:
            now = time.monotonic()
            first = self._opened[key][0] if key in self._pending else now  # the first opens the window
            self._opened[key] = (first, now)
            self._pending.setdefault(key, []).append(request)
        self._wait_for_company(key)
        while not request.done.is_set():
            compute_thread.run(self._take_and_run, bundle, lock, key, params, request)
        if request.error is not None:
            raise request.error
        if stats is not None:
            stats.update(request.stats)
        return request.result

    @staticmethod
    def _alone(bundle, lock: threading.RLock, cond: Conditioning, params: SamplingParams, seed: int,
               progress: Progress | None, decode: DecodeOptions, stats: dict | None,
               reserve: Reserve | None) -> TokenCanvas:
        with lock, (reserve(cond.batch) if reserve else nullcontext()):
            return generate(bundle, cond, params=params, seed=seed, progress=progress, decode=decode, stats=stats)

    def _take_and_run(self, bundle, lock: threading.RLock, key: tuple, params: SamplingParams,
                      request: _Request) -> None:
        """Under the model's lock (on the compute thread): run the oldest queued requests of ``key``, unless
        an earlier batch already served ``request``."""
        with lock:
            batch = self._take(key) if not request.done.is_set() else []
            if batch:
                self._run(bundle, batch, params)

    def _wait_for_company(self, key: tuple) -> None:
        """Until a window passes with no new arrival (at most ``MAX_WINDOWS`` from the first), the group
        fills a batch, or every announced request is here and ``grace_s`` passed quietly: every member
        waits, so none of them takes the model for a batch of one while the others are still arriving."""
        window, grace = self.settings.window_s, self.settings.grace_s
        while True:
            # announced before arrived, and arrived before withdrawn: reading the announcements first
            # never counts a request as here whose announcement was already withdrawn
            expected, announced = arrivals.expected()
            with self._lock:
                if key not in self._opened:  # taken by a batch already
                    return
                first, latest = self._opened[key]
                if sum(r.cond.batch for r in self._pending.get(key, ())) >= self.settings.max_images:
                    return
                waiting = sum(len(q) for q in self._pending.values()) + self._alone_running
            all_here = 0 < expected <= waiting
            quiet_since = max(latest, announced)
            now = time.monotonic()
            if all_here and now >= quiet_since + grace:
                return
            if now >= min(latest + window, first + MAX_WINDOWS * window):
                return
            time.sleep(min(0.002, window))

    def _take(self, key: tuple) -> list[_Request]:
        """The oldest queued requests of ``key`` that fit in one batch (at least one)."""
        with self._lock:
            queue = self._pending.get(key, [])
            taken, images = [], 0
            while queue and (not taken or images + queue[0].cond.batch <= self.settings.max_images):
                images += queue[0].cond.batch
                taken.append(queue.pop(0))
            if not queue:
                self._pending.pop(key, None)
                self._opened.pop(key, None)
            return taken

    def _run(self, bundle, batch: list[_Request], params: SamplingParams) -> None:
        """Reserve the batch's memory and run it; a batch too big for the memory left runs its
        requests one by one instead (each refused alone only if it cannot fit by itself)."""
        reserve = batch[0].reserve
        try:
            with reserve(sum(r.cond.batch for r in batch)) if reserve else nullcontext():
                return self._run_reserved(bundle, batch, params)
        except LimitError as e:
            if len(batch) == 1:
                batch[0].error = e
                batch[0].done.set()
                return
        for r in batch:
            self._run(bundle, [r], params)

    def _run_reserved(self, bundle, batch: list[_Request], params: SamplingParams) -> None:
        """One generation for the whole batch; each request gets its rows, or its own error. A request
        whose progress callback raises (the user cancelled it) leaves the batch; the rest go on."""
        rows = tuple(r.cond.batch for r in batch)
        generators = RequestGenerators(tuple(make_generator(r.seed, bundle.device) for r in batch), rows)
        live = list(batch)

        def progress(step: int, total: int) -> None:
            for r in list(live):
                if r.progress is None:
                    continue
                try:
                    r.progress(step, total)
                except BaseException as e:  # noqa: BLE001 - that request's own failure (e.g. cancelled)
                    r.error = e
                    live.remove(r)
            if not live:
                raise batch[-1].error
        stats: dict = {}
        out = None
        try:
            out = generate(bundle, _merged([r.cond for r in batch]), params=params, generator=generators,
                           progress=progress if any(r.progress for r in batch) else None, stats=stats)
        except BaseException as e:  # noqa: BLE001 - every request still waiting sees the failure
            for r in batch:
                r.error = r.error or e
        finally:
            self.batches = (self.batches + [len(batch)])[-256:]
        start = 0
        for r, n in zip(batch, rows):
            if r.error is None and out is not None:
                r.result = out if len(batch) == 1 else _rows(out, start, start + n)
                r.stats = {**stats, "batched_with": len(batch) - 1}
            start += n
            r.done.set()


_default: GenerationBatcher | None = None
_default_lock = threading.Lock()


def default_batcher() -> GenerationBatcher:
    global _default
    with _default_lock:
        if _default is None:
            _default = GenerationBatcher()
        return _default
