"""ModelCache: LRU eviction at the byte budget, pinning, unload, info, errors, thread safety."""
from __future__ import annotations

import threading
import time

import pytest
from torch import nn

from arnodes.engine.classes import ClassNames
from arnodes.engine.errors import InvalidInputError, UnknownNameError, UnsupportedError
from arnodes.engine.loader import ModelBundle
from arnodes.engine.model_cache import ModelCache, budget_from_env, default_cache

MB = 4 * 64 * 64 + 4 * 64  # float32 Linear(64, 64) with bias: 16640 bytes


class FakeLoader:
    """Builds tiny bundles directly (one Linear generator, an empty tokenizer) and counts loads."""

    def __init__(self, delay: float = 0.0) -> None:
        self.calls: list[tuple] = []
        self.delay = delay
        self.lock = threading.Lock()

    def __call__(self, name, *, device, dtype, quant, models_dir):
        with self.lock:
            self.calls.append((name, dtype, quant, device))
        time.sleep(self.delay)
        return ModelBundle(name=name, family="var", tokenizer=nn.Module(), generator=nn.Linear(64, 64),
                           classes=ClassNames(["a"]), image_size=64)


def resident(cache: ModelCache) -> list[str]:
    return sorted(d["name"] for d in cache.info())


def test_bundle_bytes_are_the_weights():
    b = FakeLoader()("m", device="cpu", dtype="float32", quant="none", models_dir=None)
    assert b.resident_bytes() == MB


def test_evicts_least_recently_used_at_budget():
    loader = FakeLoader()
    cache = ModelCache(budget_bytes=2 * MB, loader=loader)
    a = cache.get("a")
    cache.get("b")
    assert cache.get("a") is a  # a hit; a is now more recent than b
    cache.get("c")  # 3 bundles > budget of 2: b (least recently used) goes
    assert resident(cache) == ["a", "c"]
    assert cache.resident_bytes("cpu") == 2 * MB
    assert [c[0] for c in loader.calls] == ["a", "b", "c"]
    cache.get("b")  # reloaded; a is now the oldest
    assert resident(cache) == ["b", "c"] and len(loader.calls) == 4


def test_pinned_bundle_is_never_evicted(caplog):
    cache = ModelCache(budget_bytes=MB, loader=FakeLoader())
    with cache.use("a") as a:
        cache.get("b")  # over budget: a is in use, so b loads anyway (with a warning)
        assert resident(cache) == ["a", "b"]
        assert [d["pinned"] for d in cache.info() if d["name"] == "a"] == [True]
        cache.get("c")  # b is unpinned and old: evicted; a stays
        assert resident(cache) == ["a", "c"]
        assert cache.get("a") is a
    assert "over budget" in caplog.text
    cache.get("d")
    assert resident(cache) == ["d"]


def test_unload_and_info_and_keys():
    cache = ModelCache(budget_bytes=None, loader=FakeLoader())
    cache.get("a")
    cache.get("a", dtype="bfloat16", quant="int8")
    cache.get("b")
    rows = cache.info()
    assert {(r["name"], r["dtype"], r["quant"], r["device"]) for r in rows} == {
        ("a", "float32", "none", "cpu"), ("a", "bfloat16", "int8", "cpu"), ("b", "float32", "none", "cpu")}
    assert set(rows[0]) >= {"name", "device", "dtype", "quant", "bytes", "pinned", "last_used"}
    assert cache.unload("a") == 2 and resident(cache) == ["b"]
    key = ModelCache.make_key("b")
    assert key in cache and cache.unload(key) == 1 and resident(cache) == []
    with cache.use("c"):
        cache.unload()  # pinned: dropped only when released
        assert resident(cache) == ["c"]
    assert resident(cache) == []


def test_bad_names_are_refused():
    cache = ModelCache(loader=FakeLoader())
    with pytest.raises(UnknownNameError, match="bfloat16"):
        cache.get("a", dtype="fp32")
    with pytest.raises(UnknownNameError, match="int4-g128"):
        cache.get("a", quant="int2")
    with pytest.raises(UnsupportedError, match="only 'none'"):
        cache.get("a", device="meta", quant="int8")
    with pytest.raises(InvalidInputError):
        ModelCache(budget_bytes=-1)


def test_concurrent_gets_load_once():
    loader = FakeLoader(delay=0.2)
    cache = ModelCache(budget_bytes=None, loader=loader)
    got: list = []
    threads = [threading.Thread(target=lambda: got.append(cache.get("a"))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(loader.calls) == 1 and all(b is got[0] for b in got)


def test_budget_from_env(monkeypatch):
    monkeypatch.setenv("ARNODES_CACHE_BYTES", "12345")
    assert budget_from_env() == 12345
    monkeypatch.setenv("ARNODES_CACHE_BYTES", "lots")
    with pytest.raises(InvalidInputError, match="ARNODES_CACHE_BYTES"):
        budget_from_env()
    monkeypatch.delenv("ARNODES_CACHE_BYTES")
    assert budget_from_env() is None  # each device's own memory
    assert default_cache() is default_cache() and default_cache().budget("cpu") > 0


def test_real_loader_with_manifests(tmp_path):
    """Three manifests on the real load path, each generator ~= the budget/2: the oldest goes."""
    import dataclasses
    import json
    from pathlib import Path

    from parity_var import msvq_config, var_config
    case = Path(__file__).resolve().parents[1] / "fixtures" / "reference" / "var" / "tiny_a"
    cfg = json.loads((case / "config.json").read_text())
    for name in ("x", "y", "z"):
        m = {"name": name, "family": "var", "image_size": cfg["image_size"],
             "tokenizer": {"kind": "msvq", "config": dataclasses.asdict(msvq_config(cfg)),
                           "file": str(case / "vae.safetensors")},
             "generator": {"kind": "var", "config": dataclasses.asdict(var_config(cfg)),
                           "file": str(case / "var.safetensors")}}
        (tmp_path / f"{name}.json").write_text(json.dumps(m))
    probe = ModelCache(budget_bytes=None)
    size = probe.get(str(tmp_path / "x.json")).resident_bytes()
    q_size = probe.get(str(tmp_path / "x.json"), quant="int8").resident_bytes()
    assert q_size < size
    cache = ModelCache(budget_bytes=2 * size)
    for name in ("x", "y", "z"):
        cache.get(str(tmp_path / f"{name}.json"))
    assert sorted(Path(d["name"]).stem for d in cache.info()) == ["y", "z"]


def test_gpu_bundles_are_offloaded_then_moved_back(monkeypatch):
    """On a GPU key, eviction moves the bundle to CPU memory (no reload from disk); tensors moves faked."""
    moves: list[tuple[str, str]] = []
    monkeypatch.setattr(ModelCache, "_move", staticmethod(lambda b, dev: moves.append((b.name, dev)) or b))
    loader = FakeLoader()
    cache = ModelCache(budget_bytes=MB, loader=loader)
    a = cache.get("a", device="cuda:0")
    cache.get("b", device="cuda:0")
    assert moves == [("a", "cpu")]
    rows = {d["name"]: d for d in cache.info()}
    assert rows["a"]["resident_on"] == "cpu" and rows["b"]["resident_on"] == "cuda:0"
    assert cache.resident_bytes("cuda:0") == MB and cache.resident_bytes("cpu") == MB
    assert cache.get("a", device="cuda:0") is a  # moved back, b offloaded in turn
    # b leaves before a comes back: a's size is known, so the two never share a device that fits one
    assert moves == [("a", "cpu"), ("b", "cpu"), ("a", "cuda:0")] and len(loader.calls) == 2


def test_room_is_made_before_a_load_when_its_size_can_be_estimated(monkeypatch):
    """Loading first and evicting after would hold both models at once: on a GPU that holds one, an OOM."""
    monkeypatch.setattr(ModelCache, "_move", staticmethod(lambda b, dev: b))
    seen_at_load: list[list[str]] = []
    fake = FakeLoader()

    def loader(name, **kw):
        seen_at_load.append([d["name"] for d in cache.info() if d["resident_on"] == "cuda:0"])
        return fake(name, **kw)
    cache = ModelCache(budget_bytes=MB, loader=loader, estimate=lambda name, dtype, quant: MB)
    cache.get("a", device="cuda:0")
    cache.get("b", device="cuda:0")
    assert seen_at_load == [[], []]  # a left the device before b was read
    late = ModelCache(budget_bytes=MB, loader=loader)  # a custom loader without an estimate: after the load
    seen_at_load.clear()
    late.get("a", device="cuda:0")
    late.get("b", device="cuda:0")
    assert [d["name"] for d in late.info() if d["resident_on"] == "cuda:0"] == ["b"]


def test_bundle_estimates_come_from_configs_alone():
    import torch

    from arnodes.engine.loader import estimate_bundle_bytes, load_bundle
    for dtype, quant in ((torch.float32, "none"), (torch.bfloat16, "int8"), (torch.bfloat16, "int4-g32")):
        estimate = estimate_bundle_bytes("emoji-var", dtype, quant)
        bundle = load_bundle("emoji-var", dtype=dtype, quant=quant)
        adapters = sum(t.numel() * t.element_size() for c in bundle.controls.values()
                       for t in [*c.module.parameters(), *c.module.buffers()])
        assert estimate == bundle.resident_bytes() - adapters  # exact for what it counts; adapters come after
    d16 = estimate_bundle_bytes("var-d16")  # a registry model: no file is needed
    assert abs(d16 - (310.28e6 + 108.9e6) * 4) < 0.01 * d16
    assert estimate_bundle_bytes("var-d16", torch.bfloat16, "int8") < 0.5 * d16
    assert estimate_bundle_bytes("no-such-model") is None and estimate_bundle_bytes("/nonexistent/m.json") is None


def test_an_offloaded_model_leaves_its_kv_caches_behind(monkeypatch):
    """KV caches are scratch: moving them to CPU memory with the weights would cost transfer time and host
    memory (at batch 16 they can outweigh the model). Real models of both families drop them."""
    from arnodes.engine.kv_cache import KVCache
    monkeypatch.setattr(ModelCache, "_move", staticmethod(lambda b, dev: b))

    class WithCache(nn.Linear):
        def __init__(self) -> None:
            super().__init__(64, 64)
            self.kv_cache = KVCache(1, 1, 64, 64)

        def clear_caches(self) -> None:
            self.kv_cache = None

    def loader(name, *, device, dtype, quant, models_dir):
        return ModelBundle(name=name, family="var", tokenizer=nn.Module(), generator=WithCache(),
                           classes=ClassNames(["a"]), image_size=64)
    cache = ModelCache(budget_bytes=MB + 2 * 64 * 64 * 4, loader=loader)
    a = cache.get("a", device="cuda:0")
    cache.get("b", device="cuda:0")  # a is offloaded, without its cache
    assert a.generator.kv_cache is None
    assert {d["name"]: d["bytes"] for d in cache.info()}["a"] == MB
    from arnodes.engine.models.llamagen import LlamaGen, LlamaGenConfig
    gpt = LlamaGen(LlamaGenConfig(dim=64, n_layer=2, n_head=4, num_classes=10, vocab_size=256, block_size=16))
    gpt.setup_caches(1, 17)
    before = sum(b.numel() for b in gpt.buffers())
    gpt.clear_caches()
    assert all(layer.attention.kv_cache is None for layer in gpt.layers)
    assert sum(b.numel() for b in gpt.buffers()) < before


# ---- the working set of running requests -------------------------------------------------------
def test_a_request_reservation_evicts_least_recently_used_models():
    from arnodes.engine.memory import WorkingSet

    cache = ModelCache(budget_bytes=3 * MB, loader=FakeLoader())
    cache.get("old")
    cache.get("recent")
    with cache.use("a"):
        with cache.reserve("cpu", WorkingSet(kv_cache=MB), "gen"):  # 3 models + 1 > 3: the oldest goes
            assert resident(cache) == ["a", "recent"] and cache.reserved_bytes("cpu") == MB
            cache.get("b")  # a load counts the running request's reservation too: recent goes
            assert resident(cache) == ["a", "b"]
    assert cache.reserved_bytes("cpu") == 0


def test_a_request_that_cannot_fit_is_refused_with_the_numbers():
    from arnodes.engine.errors import LimitError
    from arnodes.engine.memory import WorkingSet

    cache = ModelCache(budget_bytes=2 * MB, loader=FakeLoader())
    cache.get("idle")
    with cache.use("busy"):
        need = WorkingSet(kv_cache=2 * MB, activations=MB // 2)
        with pytest.raises(LimitError) as info:
            with cache.reserve("cpu", need, "ARGenerate (8 image(s))"):
                pass
        message = str(info.value)
        for part in ("ARGenerate (8 image(s)): needs about", "KV cache", "on cpu", "budget there is",
                     "busy (float32", "make the request smaller", "ARNODES_CACHE_BYTES"):
            assert part in message, message
        assert resident(cache) == ["busy"]  # the idle model was evicted trying to make room
        assert cache.reserved_bytes("cpu") == 0  # nothing held after a refusal
        with cache.reserve("cpu", WorkingSet(kv_cache=MB // 2), "small"):
            pass


def test_kv_cache_is_counted_for_real_models():
    """The reservation the nodes make grows with the batch, KV cache included: with room for the
    weights and one image's working set, a batch of one fits and a batch of 16 is refused."""
    from arnodes.engine.errors import LimitError
    from arnodes.engine.memory import working_set
    from arnodes.engine.registry import DEFAULT_MODEL

    probe = ModelCache(budget_bytes=None)
    weights = probe.get(DEFAULT_MODEL).resident_bytes()
    one = working_set(probe.get(DEFAULT_MODEL), 1)
    assert one.kv_cache > 0 and working_set(probe.get(DEFAULT_MODEL), 16).kv_cache == 16 * one.kv_cache
    cache = ModelCache(budget_bytes=weights + 2 * one.total)
    with cache.use(DEFAULT_MODEL) as bundle:
        with cache.reserve(bundle.device, working_set(bundle, 1), "one"):
            pass
        with pytest.raises(LimitError, match="KV cache"):
            with cache.reserve(bundle.device, working_set(bundle, 16), "sixteen"):
                pass


def _bytes_kept_after_generating(model: str) -> tuple[int, int]:
    """(bytes the cache counts for ``model`` beyond its weights after one CFG generation of 4 images,
    that generation's KV-cache estimate)."""
    from arnodes.engine.conditioning import Conditioning
    from arnodes.engine.generate import generate
    from arnodes.engine.memory import working_set
    from arnodes.engine.sampling import SamplingParams

    cache = ModelCache(budget_bytes=None)
    with cache.use(model) as bundle:
        weights = cache.info()[0]["bytes"]
        with cache.reserve(bundle.device, working_set(bundle, 4), "gen", bundle):
            generate(bundle, Conditioning((0, 1, 2, 3), cfg=2.0), params=SamplingParams(), seed=0)
    return cache.info()[0]["bytes"] - weights, working_set(bundle, 4).kv_cache


def test_kv_caches_a_model_keeps_after_generating_count_as_its_memory():
    kept, estimate = _bytes_kept_after_generating("emoji-raster")
    assert 0 < kept <= estimate  # reused by the next request, so it stays counted


def test_next_scale_models_give_their_kv_caches_back_on_the_cpu():
    """VAR's conv decoder runs right after the last scale, in the same host memory: holding the
    caches through it would raise the image's peak above the official code's, which frees them."""
    from arnodes.engine.registry import DEFAULT_MODEL

    kept, estimate = _bytes_kept_after_generating(DEFAULT_MODEL)
    assert estimate > 0 and kept == 0


def test_default_budget_is_the_device_memory(monkeypatch):
    from arnodes.engine import memory

    monkeypatch.delenv("ARNODES_CACHE_BYTES", raising=False)
    cache = ModelCache(budget_from_env(), device_budget=memory.device_budget)
    assert cache.budget("cpu") == memory.device_budget("cpu") > 0
    monkeypatch.setattr(memory.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(memory.torch.cuda, "mem_get_info", lambda dev: (5 << 30, 80 << 30))
    assert memory.device_budget("cuda:0") == int((80 << 30) * memory.DEVICE_FRACTION)
    assert ModelCache(7, device_budget=memory.device_budget).budget("cuda:0") == 7  # the env setting wins


@pytest.mark.parametrize("layout", ["v2", "v1"])
def test_a_container_memory_limit_bounds_what_is_available(tmp_path, monkeypatch, layout):
    """In a container the kernel kills at the cgroup's limit, whatever the host has free."""
    from arnodes.engine import limits, memory

    root = tmp_path / "cgroup"
    if layout == "v2":
        root.mkdir()
        (root / "memory.max").write_text(f"{3 << 30}\n")
        (root / "memory.current").write_text(f"{1 << 30}\n")
    else:
        (root / "memory").mkdir(parents=True)
        (root / "memory" / "memory.limit_in_bytes").write_text(f"{3 << 30}\n")
        (root / "memory" / "memory.usage_in_bytes").write_text(f"{1 << 30}\n")
    monkeypatch.setattr(limits, "CGROUP_ROOT", root)
    assert limits.cgroup_memory() == (3 << 30, 1 << 30)
    assert limits.available_bytes("cpu") <= 2 << 30
    assert memory.device_budget("cpu") <= int((3 << 30) * memory.HOST_FRACTION)
    (root / ("memory.max" if layout == "v2" else "memory/memory.limit_in_bytes")).write_text(
        "max\n" if layout == "v2" else "9223372036854771712\n")
    assert limits.cgroup_memory() is None and limits.available_bytes("cpu") > 0


def test_free_gpu_memory_counts_what_torchs_allocator_holds_unused(monkeypatch):
    """After a big batch torch keeps the freed blocks reserved; they are free for the next request."""
    import torch

    from arnodes.engine import limits

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (2 << 30, 80 << 30))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 6 << 30)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 1 << 30)
    assert limits.available_bytes("cuda:0") == (2 << 30) + (5 << 30)
