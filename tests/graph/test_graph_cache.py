"""Cache keys: deterministic, order-independent, transitive; unhashable literals handled."""
from __future__ import annotations

from arnodes.graph.cache import CacheEntry, LRUCache, canonical_json, node_key


def test_key_ignores_input_order_and_is_stable():
    a = node_key("X", {"a": 1, "b": [1, {"z": 1, "y": 2}]}, {"c": ("k1", 0)})
    b = node_key("X", {"b": [1, {"y": 2, "z": 1}], "a": 1}, {"c": ("k1", 0)})
    assert a == b and len(a) == 64


def test_key_changes_with_every_ingredient():
    base = node_key("X", {"a": 1}, {"c": ("k1", 0)})
    variants = [node_key("Y", {"a": 1}, {"c": ("k1", 0)}), node_key("X", {"a": 2}, {"c": ("k1", 0)}),
                node_key("X", {"a": 1}, {"c": ("k2", 0)}), node_key("X", {"a": 1}, {"c": ("k1", 1)}),
                node_key("X", {"a": 1}, {"c": ("k1", 0)}, fingerprint="f"),
                node_key("X", {"a": 1}, {"c": ("k1", 0)}, nonce="n"), node_key("X", {"a": 1.0}, {"c": ("k1", 0)})]
    assert base not in variants and len(set(variants)) == len(variants)


def test_unhashable_and_non_json_literals():
    assert canonical_json({"b": {1, 2}, "a": (1, 2)}) == canonical_json({"a": [1, 2], "b": [1, 2]})
    obj = object()
    assert canonical_json(obj) == canonical_json(obj) != canonical_json(object())


def test_lru_recency():
    c = LRUCache(2)
    c.set("a", CacheEntry((1,)))
    c.set("b", CacheEntry((2,)))
    assert c.get("a").outputs == (1,)
    c.set("c", CacheEntry((3,)))
    assert c.get("b") is None and c.get("a") is not None and len(c) == 2
