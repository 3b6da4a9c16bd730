"""Output cache keyed by input signatures, so a re-run recomputes only what changed.

A node's key hashes: its class_type, its literal inputs (sorted by name, JSON-
canonicalised so lists/dicts work), for each linked input the upstream node's
key and output index, and the node's `fingerprint` (e.g. an input file's size
and mtime). Keys are therefore transitive: changing one widget changes that
node's key and the keys of everything downstream, and nothing else.

Impure nodes (`NodeSpec.pure=False`) are never served from cache, and their key
includes a per-run nonce, which makes every dependent's key unique to the run.
Strategies are swappable: NullCache (never hits) and LRUCache (the default).
"""
from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Mapping, Protocol

__all__ = ["CacheEntry", "Cache", "NullCache", "LRUCache", "node_key", "canonical_json"]


@dataclass(frozen=True)
class CacheEntry:
    outputs: tuple
    ui: dict | None = None


class Cache(Protocol):
    def get(self, key: str) -> CacheEntry | None: ...
    def set(self, key: str, entry: CacheEntry) -> None: ...
    def clear(self) -> None: ...


class NullCache:
    """Caches nothing: every run executes every needed node."""

    def get(self, key: str) -> CacheEntry | None:
        return None

    def set(self, key: str, entry: CacheEntry) -> None:
        return None

    def clear(self) -> None:
        return None

    def __len__(self) -> int:
        return 0


class LRUCache:
    """Keeps the `max_entries` most recently used node results (thread-safe)."""

    def __init__(self, max_entries: int = 64):
        if isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries < 1:
            raise ValueError(f"max_entries must be a positive integer, got {max_entries!r}")
        self.max_entries = max_entries
        self._entries: OrderedDict[str, CacheEntry] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> CacheEntry | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
            return entry

    def set(self, key: str, entry: CacheEntry) -> None:
        with self._lock:
            self._entries[key] = entry
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


def _unserialisable(value: Any) -> Any:
    # Non-JSON literals (only possible from Python callers) are keyed by identity: never wrongly shared.
    if isinstance(value, (tuple, set, frozenset)):
        return sorted(value, key=repr) if isinstance(value, (set, frozenset)) else list(value)
    return {"__object__": f"{type(value).__module__}.{type(value).__qualname__}", "id": id(value)}


def canonical_json(value: Any) -> str:
    """Deterministic text for any literal value (dict keys sorted, unhashables welcome)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=_unserialisable)


def node_key(class_type: str, literals: Mapping[str, Any], links: Mapping[str, tuple[str, int]],
             fingerprint: str = "", nonce: str | None = None) -> str:
    """Cache key of one node: `links` maps input name -> (upstream key, output index)."""
    material = {
        "class_type": class_type,
        "literals": sorted((name, canonical_json(v)) for name, v in literals.items()),
        "links": sorted((name, key, index) for name, (key, index) in links.items()),
        "fingerprint": fingerprint,
        "nonce": nonce,
    }
    return hashlib.sha256(canonical_json(material).encode("utf-8")).hexdigest()
