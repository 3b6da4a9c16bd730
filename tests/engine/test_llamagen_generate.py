"""LlamaGen generation on tiny random models: KV cache correctness, constraints, CFG, errors."""
from __future__ import annotations

import pytest
import torch

from arnodes.engine.conditioning import Conditioning
from arnodes.engine.errors import CancelledError, InvalidInputError
from arnodes.engine.generate.canvas import TokenCanvas
from arnodes.engine.generate.next_token import generate_tokens
from arnodes.engine.guidance import cfg_combine, llamagen_guided_step
from arnodes.engine.models.llamagen import LlamaGen, LlamaGenConfig
from arnodes.engine.sampling import SamplingParams

GREEDY = SamplingParams(top_k=1, top_p_style="llamagen")


def tiny_model(n_kv_head: int | None = None, grid: int = 4, seed: int = 0) -> LlamaGen:
    """Random weights scaled so that logits have clear argmax margins."""
    cfg = LlamaGenConfig(dim=64, n_layer=2, n_head=4, n_kv_head=n_kv_head, multiple_of=32, num_classes=5,
                         vocab_size=40, block_size=grid * grid)
    model = LlamaGen(cfg)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or "_norm." in name:
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=gen))
            elif "embedding" in name:
                p.copy_(torch.randn(p.shape, generator=gen))
            else:
                scale = 2.0 if name == "output.weight" else 1.0
                p.copy_(torch.randn(p.shape, generator=gen) * scale / p.shape[1] ** 0.5)
    return model.eval()


def uncached_greedy(model: LlamaGen, labels: list[int], cfg: float = 1.0, cfg_interval: int = -1,
                    forced: torch.Tensor | None = None, known: torch.Tensor | None = None) -> torch.Tensor:
    """Reference decoding: re-run the teacher-forced forward on the whole prefix at every step."""
    B, L = len(labels), model.config.block_size
    lab = torch.tensor(labels)
    null = torch.full_like(lab, model.num_classes)
    tokens = torch.zeros(B, L, dtype=torch.long)
    with torch.no_grad():
        for t in range(L):
            logits = model(lab, tokens[:, : t + 1])[:, t]  # (B, V)
            if cfg > 1.0 and llamagen_guided_step(t, cfg_interval):
                logits = cfg_combine(logits, model(null, tokens[:, : t + 1])[:, t], cfg)
            choice = logits.argmax(-1)
            if known is not None:
                choice = torch.where(known[:, t], forced[:, t], choice)
            tokens[:, t] = choice
    return tokens


def run(model, labels, canvas=None, params=GREEDY, cfg=1.0, cfg_interval=-1, seed=0, **kw) -> torch.Tensor:
    cond = Conditioning(tuple(labels), cfg=cfg, cfg_interval=cfg_interval)
    out = generate_tokens(model, cond, canvas, params, torch.Generator().manual_seed(seed), **kw)
    return out.grids[0].reshape(len(labels), -1)


@pytest.mark.parametrize("n_kv_head", [None, 2])
def test_cached_equals_uncached_argmax(n_kv_head):
    model = tiny_model(n_kv_head)
    labels = [0, 3, 4]
    assert torch.equal(run(model, labels), uncached_greedy(model, labels))


def test_cached_cfg_and_interval_equal_uncached():
    model = tiny_model(grid=3)
    labels = [1, 2]
    assert torch.equal(run(model, labels, cfg=3.0), uncached_greedy(model, labels, cfg=3.0))
    assert torch.equal(run(model, labels, cfg=3.0, cfg_interval=2),
                       uncached_greedy(model, labels, cfg=3.0, cfg_interval=2))


def test_kv_cache_is_static_across_steps_and_calls():
    model = tiny_model()
    ptrs: list[list[int]] = []

    def record(step, total):
        ptrs.append([layer.attention.kv_cache.k_cache.data_ptr() for layer in model.layers])

    run(model, [1, 2], progress=record)
    run(model, [3], progress=record)  # a smaller batch reuses the same buffers
    assert len(ptrs) == 2 * model.config.block_size
    assert all(p == ptrs[0] for p in ptrs)
    cache = model.layers[0].attention.kv_cache.k_cache
    assert cache.shape == (2, 4, 24, 16)  # (batch, heads, find_multiple(1 + 16, 8), head_dim)


def test_constrained_generation_keeps_known_tokens():
    model = tiny_model()
    B, g = 2, model.grid_size
    gen = torch.Generator().manual_seed(1)
    forced = torch.randint(0, model.config.vocab_size, (B, g, g), generator=gen)
    known = torch.rand(B, g, g, generator=gen) < 0.5
    canvas = TokenCanvas("llamagen", "tok", [forced], [known])
    out = run(model, [0, 1], canvas=canvas)
    kf, ff = known.reshape(B, -1), forced.reshape(B, -1)
    assert torch.equal(out[kf], ff[kf])
    assert torch.equal(out, uncached_greedy(model, [0, 1], forced=ff, known=kf))


def test_fully_known_canvas_is_returned_unchanged_and_batch1_canvas_expands():
    model = tiny_model()
    codes = torch.randint(0, model.config.vocab_size, (1, 4, 4))
    canvas = TokenCanvas.from_codes("llamagen", "tok", [codes])
    out = run(model, [2, 3], canvas=canvas)
    assert torch.equal(out, codes.reshape(1, -1).expand(2, -1))


def test_seeded_sampling_is_reproducible():
    model = tiny_model()
    params = SamplingParams(temperature=1.0, top_k=10, top_p=0.9, top_p_style="llamagen")
    a = run(model, [0, 1], params=params, seed=5, cfg=2.0)
    b = run(model, [0, 1], params=params, seed=5, cfg=2.0)
    c = run(model, [0, 1], params=params, seed=6, cfg=2.0)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_trace_and_cancel():
    model = tiny_model()
    trace: dict = {}
    run(model, [0], cfg=2.0, trace=trace)
    assert len(trace["raw_logits"]) == 16 and trace["raw_logits"][0].shape == (2, 40)
    assert trace["guided_logits"][0].shape == (1, 40)

    def cancel(step, total):
        if step == 3:
            raise CancelledError("stop")

    with pytest.raises(CancelledError):
        run(model, [0], progress=cancel)


def test_bad_inputs_raise_clear_errors():
    model = tiny_model()
    with pytest.raises(InvalidInputError, match=r"\[0, 5\)"):
        run(model, [5])
    with pytest.raises(InvalidInputError, match=r"\[0, 5\)"):
        run(model, [-1])
    wrong = TokenCanvas.empty("llamagen", "tok", [(3, 3)], 1)
    with pytest.raises(InvalidInputError, match="3, 3"):
        run(model, [0], canvas=wrong)
    other = TokenCanvas.empty("var", "tok", [(4, 4)], 1)
    with pytest.raises(InvalidInputError, match="var"):
        run(model, [0], canvas=other)
    with pytest.raises(InvalidInputError, match="batch"):
        run(model, [0, 1, 2], canvas=TokenCanvas.empty("llamagen", "tok", [(4, 4)], 2))
    with pytest.raises(InvalidInputError):
        model(torch.tensor([0]), torch.zeros(1, 17, dtype=torch.long))
