"""An LRU of loaded ModelBundles keyed by (name, dtype, quant, device), bounded per device by a
memory budget that counts weights and the working sets of the requests running.

Several models stay loaded so switching between them is free, but never more than
the budget allows: loading past it evicts the least recently used bundles of the same
device (on a GPU they are offloaded to CPU memory, without their KV caches, and moved back
on the next ``get``), before the new one is read when its size is known or estimated from
its configs (``loader.estimate_bundle_bytes``).
The budget is the device's own memory (``memory.device_budget``: the GPU's, or the host's RAM)
unless ``ARNODES_CACHE_BYTES`` sets one. Before a generation allocates its KV cache and
activations it reserves them (``reserve``): models not in use are evicted to make room, and a
request that cannot fit even then is refused with the numbers, not left to run out of memory.
A bundle inside ``with cache.use(...)`` is pinned and never evicted; if everything
is pinned a load goes over budget with a warning rather than failing mid-run.
Model files and the loader know nothing about caching (STYLE.md item 8).
"""
from __future__ import annotations

import logging
import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch

from .errors import InvalidInputError, LimitError, UnknownNameError
from . import limits
from .loader import ModelBundle, estimate_bundle_bytes, load_bundle
from .memory import WorkingSet, device_budget, gib
from .quantize import check_supported

logger = logging.getLogger(__name__)

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
CacheKey = tuple[str, str, str, str]  # (name, dtype, quant, device)
Loader = Callable[..., ModelBundle]  # (name, device=, dtype=, quant=, models_dir=) -> ModelBundle
Estimate = Callable[..., "int | None"]  # (name, dtype=, quant=) -> bytes the bundle will take, None: unknown


def parse_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise UnknownNameError(f"unknown dtype {name!r}; available: {list(DTYPES)}")
    return DTYPES[name]


def _load_with_loader(name: str, *, device: str, dtype: str, quant: str, models_dir) -> ModelBundle:
    return load_bundle(name, device=device, dtype=DTYPES[dtype], models_dir=models_dir, quant=quant)


def _estimate_with_loader(name: str, *, dtype: str, quant: str) -> int | None:
    return estimate_bundle_bytes(name, DTYPES[dtype], quant)


@dataclass
class _Entry:
    key: CacheKey
    bundle: ModelBundle
    nbytes: int
    pins: int = 0
    last_used: float = 0.0
    offloaded: bool = False  # on CPU memory while its key's device is a GPU
    doomed: bool = False  # unload requested while pinned: drop when the last pin goes


class ModelCache:
    """Thread-safe: one lock guards the table; loading runs outside it, one loader per key."""

    def __init__(self, budget_bytes: int | None = None, *, loader: Loader | None = None,
                 offload_budget_bytes: int | None = None,
                 device_budget: Callable[[str], int | None] | None = None, estimate: Estimate | None = None) -> None:
        """``budget_bytes``: the same budget on every device; else ``device_budget(device)`` (None
        from either: unbounded). ``estimate``: a bundle's bytes before it loads, so room is made first
        (default: from the model's configs with the default loader; none with a custom one)."""
        if budget_bytes is not None and budget_bytes < 0:
            raise InvalidInputError(f"cache budget must be >= 0 bytes, got {budget_bytes}")
        self.budget_bytes = budget_bytes
        self._device_budget = device_budget
        self.offload_budget_bytes = offload_budget_bytes if offload_budget_bytes is not None else _half_ram()
        self._loader = loader or _load_with_loader
        self._estimate = estimate or (_estimate_with_loader if loader is None else None)
        self._lock = threading.RLock()
        self._entries: dict[CacheKey, _Entry] = {}  # insertion order is irrelevant; last_used orders LRU
        self._loading: dict[CacheKey, threading.Event] = {}
        self._reserved: dict[str, int] = {}  # device -> working-set bytes of requests running there

    # ---- keys ----------------------------------------------------------------------------------
    @staticmethod
    def make_key(name: str, *, device: str | torch.device = "cpu", dtype: str = "float32",
                 quant: str = "none") -> CacheKey:
        parse_dtype(dtype)
        check_supported(quant, device)
        dev = torch.device(device)
        if dev.type == "cuda" and dev.index is None and torch.cuda.is_available():
            dev = torch.device("cuda", torch.cuda.current_device())
        return (str(name), dtype, quant, str(dev))

    # ---- public API ----------------------------------------------------------------------------
    def get(self, name: str, *, device: str | torch.device = "cpu", dtype: str = "float32", quant: str = "none",
            models_dir: str | Path | None = None) -> ModelBundle:
        """The bundle for this key, loading (and evicting others) when it is not resident."""
        key = self.make_key(name, device=device, dtype=dtype, quant=quant)
        return self._acquire(key, models_dir, pin=False).bundle

    @contextmanager
    def use(self, name: str, *, device: str | torch.device = "cpu", dtype: str = "float32", quant: str = "none",
            models_dir: str | Path | None = None) -> Iterator[ModelBundle]:
        """Pin the bundle for the duration of a generation: it cannot be evicted meanwhile, and other
        threads wanting the same bundle wait their turn (the model's KV cache is per-module state)."""
        with self.pinned(name, device=device, dtype=dtype, quant=quant, models_dir=models_dir) as bundle:
            with bundle.generation_lock:
                yield bundle

    @contextmanager
    def pinned(self, name: str, *, device: str | torch.device = "cpu", dtype: str = "float32", quant: str = "none",
               models_dir: str | Path | None = None) -> Iterator[ModelBundle]:
        """Pin the bundle without taking its generation lock: for callers that take the lock themselves
        when they generate (the request batcher, which runs several requests under one turn)."""
        key = self.make_key(name, device=device, dtype=dtype, quant=quant)
        entry = self._acquire(key, models_dir, pin=True)
        try:
            yield entry.bundle
        finally:
            with self._lock:
                entry.pins -= 1
                entry.last_used = time.time()
                if entry.pins == 0 and entry.doomed and self._entries.get(key) is entry:
                    self._drop(entry)

    @contextmanager
    def reserve(self, device: str | torch.device, need: WorkingSet, what: str,
                bundle: ModelBundle | None = None) -> Iterator[None]:
        """Hold ``need`` bytes of ``device``'s budget while a request runs. Models not in use are
        evicted (least recently used first) to make room; a request that cannot fit even then, in
        the budget or in the memory the device has free now, is refused with the numbers.
        ``bundle``: the model that generates; afterwards the KV caches it keeps for reuse count as its memory."""
        if need.total <= 0:
            yield
            return
        try:
            with self._reserved_for(device, need, what):
                yield
        finally:
            if bundle is not None:
                self._recount(bundle)

    def _recount(self, bundle: ModelBundle) -> None:
        """A model's resident bytes again (after a generation allocated or grew its KV caches)."""
        nbytes = bundle.resident_bytes()
        with self._lock:
            for e in self._entries.values():
                if e.bundle is bundle:
                    e.nbytes = nbytes

    @contextmanager
    def _reserved_for(self, device: str | torch.device, need: WorkingSet, what: str) -> Iterator[None]:
        device = str(torch.device(device))
        with self._lock:
            self._make_room(device, need.total, refuse=(what, need))
            free = limits.available_bytes(device)
            if free is not None and need.total > free:
                self._make_room(device, None)  # everything not in use goes; then look again
                _empty_device_cache(device)
                free = limits.available_bytes(device)
                if free is not None and need.total > free:
                    raise LimitError(f"{what}: needs about {gib(need.total)} of memory ({need.describe()}) but only "
                                     f"{gib(free)} is available on {device}; make the request smaller (fewer images)")
            self._reserved[device] = self._reserved.get(device, 0) + need.total
        try:
            yield
        finally:
            with self._lock:
                self._reserved[device] -= need.total

    def budget(self, device: str | torch.device) -> int | None:
        """Bytes this cache plans for on ``device`` (None: unbounded)."""
        if self.budget_bytes is not None:
            return self.budget_bytes
        return self._device_budget(str(torch.device(device))) if self._device_budget else None

    def reserved_bytes(self, device: str | torch.device) -> int:
        """Working-set bytes reserved on ``device`` by the requests running now."""
        with self._lock:
            return self._reserved.get(str(torch.device(device)), 0)

    def unload(self, name: str | CacheKey | None = None) -> int:
        """Drop bundles: all (None), every key of a model name, or one key. Pinned ones go when released."""
        with self._lock:
            if name is None:
                targets = list(self._entries.values())
            elif isinstance(name, tuple):
                targets = [self._entries[name]] if name in self._entries else []
            else:
                targets = [e for e in self._entries.values() if e.key[0] == name]
            for e in targets:
                if e.pins:
                    e.doomed = True
                    logger.info("unload %s: in use; dropped when its generation ends", e.key)
                else:
                    self._drop(e)
            return len(targets)

    def info(self) -> list[dict]:
        """What is loaded, most recently used first (the UI's Models tab, ``arnodes models``)."""
        with self._lock:
            entries = sorted(self._entries.values(), key=lambda e: e.last_used, reverse=True)
            return [{"name": e.key[0], "dtype": e.key[1], "quant": e.key[2], "device": e.key[3],
                     "resident_on": "cpu" if e.offloaded else e.key[3], "bytes": e.nbytes,
                     "pinned": e.pins > 0, "pins": e.pins, "last_used": e.last_used} for e in entries]

    def resident_bytes(self, device: str | None = None) -> int:
        """Weight bytes resident on ``device`` (all devices when None); offloaded bundles count as CPU."""
        with self._lock:
            return sum(e.nbytes for e in self._entries.values()
                       if device is None or self._where(e) == str(torch.device(device)))

    def __contains__(self, key: CacheKey) -> bool:
        with self._lock:
            e = self._entries.get(key)
            return e is not None and not e.offloaded

    # ---- internals -----------------------------------------------------------------------------
    @staticmethod
    def _where(e: _Entry) -> str:
        return "cpu" if e.offloaded else e.key[3]

    def _acquire(self, key: CacheKey, models_dir, pin: bool) -> _Entry:
        while True:
            with self._lock:
                e = self._entries.get(key)
                if e is not None and not e.offloaded:
                    e.pins += int(pin)
                    e.doomed = False
                    e.last_used = time.time()
                    return e
                waiting = self._loading.get(key)
                if waiting is None:
                    self._loading[key] = threading.Event()
                    offloaded = self._entries.pop(key, None)  # reload from CPU memory if offloaded
                    break
            waiting.wait()  # another thread loads this key; then look again
        try:
            # room first, so two models never share a device that holds one: an offloaded bundle's size is
            # known, a new one's estimated from its configs (a lower bound; the count after loading is exact)
            if offloaded is not None:
                incoming = offloaded.nbytes
            elif self._estimate is not None and self.budget(key[3]) is not None:
                incoming = self._estimate(key[0], dtype=key[1], quant=key[2])
            else:
                incoming = None
            if incoming:
                with self._lock:
                    self._make_room(key[3], incoming, quiet=True)
            bundle = self._load(key, models_dir, offloaded)
            with self._lock:
                entry = _Entry(key, bundle, bundle.resident_bytes(), pins=int(pin), last_used=time.time())
                self._make_room(key[3], entry.nbytes)
                self._entries[key] = entry
                return entry
        finally:
            with self._lock:
                self._loading.pop(key).set()

    def _load(self, key: CacheKey, models_dir, offloaded: _Entry | None) -> ModelBundle:
        name, dtype, quant, device = key
        if offloaded is not None:
            logger.info("cache: moving %s back to %s", key, device)
            return self._move(offloaded.bundle, device)
        for attempt in (0, 1):
            try:
                return self._loader(name, device=device, dtype=dtype, quant=quant, models_dir=models_dir)
            except torch.OutOfMemoryError:
                if attempt:
                    raise
                with self._lock:  # free the device of everything unpinned, then try once more
                    logger.warning("cache: out of memory loading %s; evicting unpinned bundles on %s", key, device)
                    self._make_room(device, None)
                _empty_device_cache(device)
        raise AssertionError("unreachable")

    def _make_room(self, device: str, incoming: int | None, refuse: tuple[str, WorkingSet] | None = None,
                   quiet: bool = False) -> None:
        """Evict LRU unpinned bundles on ``device`` until ``incoming`` bytes fit beside the weights and
        reservations there (None: evict all). If they still do not fit: ``refuse`` = (what, working set)
        raises a LimitError naming both; otherwise a warning (a model load goes ahead; ``quiet``: none,
        the count after the load warns). Lock held."""
        budget = self.budget(device)
        if budget is None and incoming is not None:
            return

        def used() -> int:
            weights = sum(e.nbytes for e in self._entries.values() if self._where(e) == device)
            return weights + self._reserved.get(device, 0)
        victims = sorted((e for e in self._entries.values() if self._where(e) == device and e.pins == 0),
                         key=lambda e: e.last_used)
        for e in victims:
            if incoming is not None and used() + incoming <= budget:
                break
            self._evict(e)
        if incoming is None or used() + incoming <= budget:
            return
        if refuse is None:
            if quiet:
                return
            logger.warning("cache over budget on %s: %d + %d bytes > %d; everything else is in use, loading anyway",
                           device, used(), incoming, budget)
            return
        what, need = refuse
        in_use = ", ".join(f"{e.key[0]} ({e.key[1]}, {gib(e.nbytes)})" for e in self._entries.values()
                           if self._where(e) == device) or "none"
        raise LimitError(f"{what}: needs about {gib(need.total)} on {device} ({need.describe()}), but the model "
                         f"cache's budget there is {gib(budget)} and {gib(used())} of it is taken by models in use "
                         f"({in_use}) and running requests ({gib(self._reserved.get(device, 0))}), after evicting "
                         f"every model not in use; make the request smaller (fewer images) or raise "
                         f"ARNODES_CACHE_BYTES")

    def _evict(self, e: _Entry) -> None:
        if torch.device(e.key[3]).type == "cpu":
            logger.info("cache: evicting %s (%d bytes)", e.key, e.nbytes)
            self._drop(e)
            return
        clear_caches = getattr(e.bundle.generator, "clear_caches", None)
        if clear_caches is not None:
            clear_caches()  # KV caches are scratch, set up again by the next generation: not worth moving
            e.nbytes = e.bundle.resident_bytes()
        logger.info("cache: offloading %s (%d bytes) to CPU memory", e.key, e.nbytes)
        e.bundle = self._move(e.bundle, "cpu")
        e.offloaded = True
        _empty_device_cache(e.key[3])
        offloaded = sorted((x for x in self._entries.values() if x.offloaded and x.pins == 0), key=lambda x: x.last_used)
        while offloaded and sum(x.nbytes for x in offloaded) > self.offload_budget_bytes:
            self._drop(offloaded.pop(0))

    def _drop(self, e: _Entry) -> None:
        self._entries.pop(e.key, None)
        if torch.device(e.key[3]).type == "cuda":
            _empty_device_cache(e.key[3])

    @staticmethod
    def _move(bundle: ModelBundle, device: str) -> ModelBundle:
        bundle.generator.to(device)
        bundle.tokenizer.to(device)
        if bundle.text_encoder is not None:
            bundle.text_encoder.to(device)
        if bundle.draft_store is not None:
            bundle.draft_store = bundle.draft_store.to(device)
        return bundle


def _empty_device_cache(device: str) -> None:
    if torch.device(device).type == "cuda" and torch.cuda.is_available():
        torch.cuda.empty_cache()


def _half_ram() -> int:
    return device_budget("cpu") or 8 << 30


def budget_from_env() -> int | None:
    """``ARNODES_CACHE_BYTES`` (an integer, the same on every device; 0 keeps nothing unpinned), else
    None: each device's own memory (``memory.device_budget``)."""
    raw = os.environ.get("ARNODES_CACHE_BYTES")
    if raw is None or raw.strip() == "":
        return None
    try:
        value = int(raw.strip())
    except ValueError:
        raise InvalidInputError(f"ARNODES_CACHE_BYTES must be an integer number of bytes, got {raw!r}") from None
    if value < 0:
        raise InvalidInputError(f"ARNODES_CACHE_BYTES must be >= 0, got {value}")
    return value


_DEFAULT: ModelCache | None = None
_DEFAULT_LOCK = threading.Lock()


def default_cache() -> ModelCache:
    """The process-wide cache (budget from ``ARNODES_CACHE_BYTES``, else each device's memory), made
    on first use."""
    global _DEFAULT
    with _DEFAULT_LOCK:
        if _DEFAULT is None:
            _DEFAULT = ModelCache(budget_from_env(), device_budget=device_budget)
        return _DEFAULT
