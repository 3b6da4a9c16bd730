"""Request batching: requests that arrive together run as one batch, and each gets exactly the image
it gets alone (its own seed), on both families."""
from __future__ import annotations

import threading
import time

import pytest
import torch
from test_workflows import TINY_LLAMAGEN, TINY_VAR, tiny_models_dir

from arnodes.engine import arrivals
from arnodes.engine.batching import BatchSettings, GenerationBatcher
from arnodes.engine.conditioning import Conditioning
from arnodes.engine.errors import CancelledError, InvalidInputError
from arnodes.engine.generate import DecodeOptions, generate, make_generator
from arnodes.engine.loader import load_bundle
from arnodes.engine.sampling import RequestGenerators, SamplingParams, sample_from_logits

PARAMS = SamplingParams(top_k=0, top_p=1.0, temperature=1.1)
REQUESTS = [((1,), 3), ((2, 4), 7), ((5,), 11), ((6, 7, 8), 0)]  # (class ids, seed): sizes differ


@pytest.fixture(scope="module", params=[TINY_VAR, TINY_LLAMAGEN], ids=["var", "llamagen"])
def bundle(request):
    return load_bundle(str(tiny_models_dir() / request.param))


def _together(batcher: GenerationBatcher, bundle, requests, extra: dict | None = None) -> list:
    """Submit every request from its own thread at the same moment; results (or errors) in order."""
    results: list = [None] * len(requests)
    start = threading.Barrier(len(requests))

    def submit(i: int, ids: tuple, seed: int) -> None:
        start.wait()
        try:
            results[i] = batcher.generate(bundle, bundle.generation_lock, Conditioning(ids, cfg=2.0), PARAMS, seed,
                                          **(extra or {}).get(i, {}))
        except Exception as e:  # noqa: BLE001 - returned to the test
            results[i] = e
    threads = [threading.Thread(target=submit, args=(i, ids, seed)) for i, (ids, seed) in enumerate(requests)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    return results


def _solo(bundle, ids: tuple, seed: int):
    return generate(bundle, Conditioning(ids, cfg=2.0), params=PARAMS, seed=seed)


def test_requests_arriving_together_form_one_batch_and_keep_their_own_images(bundle):
    batcher = GenerationBatcher(BatchSettings(max_images=16, window_s=0.5))
    results = _together(batcher, bundle, REQUESTS)
    assert batcher.batches == [len(REQUESTS)]  # one generation for all of them
    for (ids, seed), got in zip(REQUESTS, results):
        want = _solo(bundle, ids, seed)
        assert got.batch == len(ids)
        assert all(torch.equal(a, b) for a, b in zip(got.grids, want.grids)), (ids, seed)
    assert not torch.equal(results[0].grids[-1], results[2].grids[-1][:1])  # different seeds, different images


def test_announced_requests_go_once_all_are_here_without_waiting_out_the_window(bundle):
    """A request alone in the process, announced (as the executor does), does not wait the window; two
    announced requests arriving 0.3 s apart still meet, and go when the second is there."""
    batcher = GenerationBatcher(BatchSettings(max_images=16, window_s=2.0, grace_s=0.005))
    (ids, seed), (ids2, seed2) = REQUESTS[:2]
    with arrivals.expecting(1):
        t0 = time.monotonic()
        alone = batcher.generate(bundle, bundle.generation_lock, Conditioning(ids, cfg=2.0), PARAMS, seed)
        alone_s = time.monotonic() - t0
    assert batcher.batches == [1] and alone_s < 1.5, alone_s  # not the 2 s window
    assert all(torch.equal(a, b) for a, b in zip(alone.grids, _solo(bundle, ids, seed).grids))
    results: list = [None, None]

    def submit(i: int, ids: tuple, seed: int) -> None:
        results[i] = batcher.generate(bundle, bundle.generation_lock, Conditioning(ids, cfg=2.0), PARAMS, seed)
    with arrivals.expecting(2):
        t0 = time.monotonic()
        first = threading.Thread(target=submit, args=(0, ids, seed))
        first.start()
        time.sleep(0.3)
        submit(1, ids2, seed2)
        first.join(timeout=60)
        pair_s = time.monotonic() - t0
    assert batcher.batches == [1, 2] and pair_s < 1.8, pair_s  # together, and not 0.3 s + the window
    for (i, s), got in zip([(ids, seed), (ids2, seed2)], results):
        assert all(torch.equal(a, b) for a, b in zip(got.grids, _solo(bundle, i, s).grids))
    unannounced = GenerationBatcher(BatchSettings(max_images=16, window_s=0.3))
    t0 = time.monotonic()
    unannounced.generate(bundle, bundle.generation_lock, Conditioning(ids, cfg=2.0), PARAMS, seed)
    assert time.monotonic() - t0 >= 0.3  # without an announcement the first arrival waits for company


def test_a_request_running_alone_counts_as_arrived_and_empty_announcements_change_nothing(bundle):
    """Two announced requests, one too big to batch (it runs alone): the other does not wait the window
    for it. Announcing nothing (a run without batchable nodes) neither counts nor restarts anyone's grace."""
    before = arrivals.expected()
    with arrivals.expecting(0):
        assert arrivals.expected() == before
    batcher = GenerationBatcher(BatchSettings(max_images=2, window_s=2.0, grace_s=0.005))
    (small, seed), (big, seed2) = REQUESTS[0], REQUESTS[1]  # one image; two images = max_images: alone
    results: list = [None, None]

    def submit(i: int, ids: tuple, s: int) -> None:
        results[i] = batcher.generate(bundle, bundle.generation_lock, Conditioning(ids, cfg=2.0), PARAMS, s)
    with arrivals.expecting(2):
        t0 = time.monotonic()
        threads = [threading.Thread(target=submit, args=a) for a in ((0, small, seed), (1, big, seed2))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        both_s = time.monotonic() - t0
    assert both_s < 1.5, both_s  # not the 2 s window
    assert results[0].batch == 1 and results[1].batch == 2


def test_with_a_compute_thread_the_batch_runs_there_and_images_stay_the_same(bundle, monkeypatch):
    from arnodes.engine import batching, compute_thread
    compute_thread.enable()
    ran_on = []
    real = batching.generate

    def recording(*args, **kwargs):
        ran_on.append(threading.current_thread().name)
        return real(*args, **kwargs)
    monkeypatch.setattr(batching, "generate", recording)
    batcher = GenerationBatcher(BatchSettings(max_images=16, window_s=0.5))
    results = _together(batcher, bundle, REQUESTS[:2])
    assert batcher.batches == [2] and ran_on == [compute_thread.THREAD_NAME]
    for (ids, seed), got in zip(REQUESTS[:2], results):
        assert all(torch.equal(a, b) for a, b in zip(got.grids, _solo(bundle, ids, seed).grids)), (ids, seed)
    off = GenerationBatcher(BatchSettings(max_images=1))  # batching off: each request alone, also there
    alone = _together(off, bundle, [((3,), 5)])[0]
    assert ran_on[-1] == compute_thread.THREAD_NAME and alone.batch == 1


def test_a_batch_never_exceeds_max_images(bundle):
    batcher = GenerationBatcher(BatchSettings(max_images=3, window_s=0.5))
    results = _together(batcher, bundle, REQUESTS)  # 1 + 2 + 1 images batched; the 3-image one runs alone
    assert all(not isinstance(r, Exception) for r in results), results
    assert sum(batcher.batches) == 3 and len(batcher.batches) == 2
    for (ids, seed), got in zip(REQUESTS, results):
        assert all(torch.equal(a, b) for a, b in zip(got.grids, _solo(bundle, ids, seed).grids))


def test_a_cancelled_request_leaves_the_batch_and_the_others_finish(bundle):
    def cancel(step: int, total: int) -> None:
        raise CancelledError("cancelled by the user")
    batcher = GenerationBatcher(BatchSettings(max_images=16, window_s=0.5))
    results = _together(batcher, bundle, REQUESTS[:3], {1: {"progress": cancel}})
    assert isinstance(results[1], CancelledError)
    assert batcher.batches == [3]
    for i in (0, 2):
        ids, seed = REQUESTS[i]
        assert all(torch.equal(a, b) for a, b in zip(results[i].grids, _solo(bundle, ids, seed).grids))


def test_requests_with_different_settings_are_not_mixed(bundle):
    batcher = GenerationBatcher(BatchSettings(max_images=16, window_s=0.3))
    results: list = [None, None]
    start = threading.Barrier(2)

    def submit(i: int, cfg: float) -> None:
        start.wait()
        results[i] = batcher.generate(bundle, bundle.generation_lock, Conditioning((1,), cfg=cfg), PARAMS, 5)
    threads = [threading.Thread(target=submit, args=(i, cfg)) for i, cfg in enumerate((2.0, 4.0))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert sorted(batcher.batches) == [1, 1]
    for got, cfg in zip(results, (2.0, 4.0)):
        want = generate(bundle, Conditioning((1,), cfg=cfg), params=PARAMS, seed=5)
        assert all(torch.equal(a, b) for a, b in zip(got.grids, want.grids))


def test_batching_off_or_strategies_that_need_the_whole_batch_run_alone():
    b = load_bundle(str(tiny_models_dir() / TINY_LLAMAGEN))
    off = GenerationBatcher(BatchSettings(max_images=1))
    out = off.generate(b, b.generation_lock, Conditioning((1,), cfg=2.0), PARAMS, 3)
    assert off.batches == [] and torch.equal(out.grids[0], _solo(b, (1,), 3).grids[0])
    on = GenerationBatcher(BatchSettings(window_s=0.0))
    on.generate(b, b.generation_lock, Conditioning((1,), cfg=2.0), PARAMS, 3, decode=DecodeOptions("sjd"))
    assert on.batches == []  # speculative decoding accepts tokens batch-wide: never batched
    with pytest.raises(InvalidInputError, match="sjd decoding .* cannot run several requests' seeds"):
        generate(b, Conditioning((1, 2), cfg=2.0), params=PARAMS, decode=DecodeOptions("sjd"),
                 generator=RequestGenerators((make_generator(1), make_generator(2)), (1, 1)))


def test_request_generators_draw_each_requests_rows_as_it_would_alone():
    logits = torch.randn(5, 7, 32)
    gens = RequestGenerators((make_generator(1), make_generator(2)), (2, 3))
    together = sample_from_logits(logits, gens)
    assert torch.equal(together[:2], sample_from_logits(logits[:2], make_generator(1)))
    assert torch.equal(together[2:], sample_from_logits(logits[2:], make_generator(2)))
    with pytest.raises(InvalidInputError, match="5 rows for requests of"):
        sample_from_logits(logits, RequestGenerators((make_generator(1),), (4,)))


def test_batch_settings_are_checked(monkeypatch):
    with pytest.raises(InvalidInputError, match="max_images must be >= 1"):
        BatchSettings(max_images=0)
    monkeypatch.setenv("ARNODES_BATCH_MAX", "4")
    monkeypatch.setenv("ARNODES_BATCH_WINDOW_MS", "5")
    monkeypatch.setenv("ARNODES_BATCH_GRACE_MS", "2")
    assert BatchSettings.from_env() == BatchSettings(max_images=4, window_s=0.005, grace_s=0.002)
    with pytest.raises(InvalidInputError, match="grace must be in"):
        BatchSettings(grace_s=-1)
    monkeypatch.setenv("ARNODES_BATCH_MAX", "many")
    with pytest.raises(InvalidInputError, match="ARNODES_BATCH_MAX"):
        BatchSettings.from_env()


def test_a_batch_too_big_for_the_memory_left_runs_its_requests_one_by_one(bundle):
    """The batch reserves its working set in the model cache's budget; when the whole batch does not fit
    each request runs alone, and only a request too big by itself is refused."""
    from arnodes.engine.errors import LimitError
    from arnodes.engine.memory import working_set
    from arnodes.engine.model_cache import ModelCache

    cache = ModelCache(budget_bytes=2 * working_set(bundle, 1).total)  # room for 2 images at once
    reserve = {"reserve": lambda n: cache.reserve(bundle.device, working_set(bundle, n), f"gen ({n} image(s))")}
    requests = REQUESTS[:3]  # 1 + 2 + 1 images: 4 together is too much, each alone fits
    batcher = GenerationBatcher(BatchSettings(max_images=16, window_s=0.5))
    results = _together(batcher, bundle, requests, {i: reserve for i in range(3)})
    assert batcher.batches == [1, 1, 1]
    for (ids, seed), got in zip(requests, results):
        assert all(torch.equal(a, b) for a, b in zip(got.grids, _solo(bundle, ids, seed).grids))
    big = _together(batcher, bundle, [((1, 2, 3), 5)], {0: reserve})[0]
    assert isinstance(big, LimitError) and "gen (3 image(s)): needs about" in str(big)
    assert cache.reserved_bytes(bundle.device) == 0
