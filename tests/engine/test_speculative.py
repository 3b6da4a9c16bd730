"""Speculative decoding for raster models: SJD is lossless (checked against plain sampling, and a broken
acceptance rule is shown to fail the same check), with every draft source including a draft store; greedy
SJD equals plain greedy, fixed tokens stay."""
from __future__ import annotations

import pytest
import torch

from arnodes.engine.conditioning import Conditioning
from arnodes.engine.errors import InvalidInputError
from arnodes.engine.generate import speculative
from arnodes.engine.generate.canvas import TokenCanvas
from arnodes.engine.generate.decoders import DecodeOptions
from arnodes.engine.generate.draft_store import DraftStore
from arnodes.engine.generate.next_token import generate_tokens
from arnodes.engine.models.llamagen import LlamaGen, LlamaGenConfig
from arnodes.engine.sampling import SamplingParams

V, GRID = 12, 2
PARAMS = SamplingParams(temperature=0.9, top_k=9, top_p=1.0, top_p_style="llamagen")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Thousands of tiny forwards: a second OpenMP thread only adds synchronisation (and stalls badly on a
    busy machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model():
    """Tiny random model with peaked (but not deterministic) next-token distributions."""
    torch.manual_seed(0)
    m = LlamaGen(LlamaGenConfig(dim=32, n_layer=1, n_head=2, num_classes=3, vocab_size=V, block_size=GRID * GRID))
    with torch.no_grad():
        m.output.weight.mul_(6.0)
    return m.eval()


def _histograms(model, decode: DecodeOptions | None, n: int, cfg: float = 2.0,
                store: DraftStore | None = None) -> torch.Tensor:
    """Counts (L, V) of tokens per position over n samples of class 1."""
    counts = torch.zeros(GRID * GRID, V)
    if decode is None:  # plain sampling is per-row exact: one batch
        out = generate_tokens(model, Conditioning((1,) * n, cfg=cfg), None, PARAMS, torch.Generator().manual_seed(7))
        toks = out.grids[0].reshape(n, -1)
    else:  # speculative, one image at a time (the realistic case: several tokens committed per forward)
        toks = torch.stack([generate_tokens(model, Conditioning((1,), cfg=cfg), None, PARAMS,
                                            torch.Generator().manual_seed(1000 + i), decode=decode,
                                            draft_store=store).grids[0].reshape(-1)
                            for i in range(n)])
    return counts.scatter_add_(1, toks.t(), torch.ones_like(toks.t(), dtype=torch.float))


def _tv(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Total-variation distance per position between two count tables."""
    return 0.5 * (a / a.sum(1, keepdim=True) - b / b.sum(1, keepdim=True)).abs().sum(1)


@pytest.fixture(scope="module")
def plain_counts(model):
    return _histograms(model, None, 4000)


@pytest.fixture(scope="module")
def store(model):
    """Grids the model draws for class 1 (drafts it accepts) and random ones (drafts it rejects), some
    labelled with other classes (never copied for class 1)."""
    drawn = generate_tokens(model, Conditioning((1,) * 24, cfg=2.0), None, PARAMS,
                            torch.Generator().manual_seed(99)).grids[0].reshape(24, -1)
    rand = torch.randint(V, (24, GRID * GRID), generator=torch.Generator().manual_seed(5))
    return DraftStore(torch.cat([drawn, rand]), torch.tensor([1] * 36 + [0] * 12))


def test_sjd_with_a_store_is_exact_per_row_in_a_mixed_batch(model, plain_counts, store):
    """Rows of classes 1, 0, 1 decoded together (CFG doubles them): class 1's rows take store grids, class
    0's only Jacobi drafts, all rows commit the same count per forward; each class-1 row still samples
    the model's distribution."""
    toks = torch.stack([generate_tokens(model, Conditioning((1, 0, 1), cfg=2.0), None, PARAMS,
                                        torch.Generator().manual_seed(5000 + i), draft_store=store,
                                        decode=DecodeOptions("sjd", window=3, init="store")).grids[0].reshape(3, -1)
                        for i in range(750)])  # (750, 3, L)
    rows = torch.cat([toks[:, 0], toks[:, 2]]).t()  # (L, 1500)
    counts = torch.zeros(GRID * GRID, V).scatter_add_(1, rows, torch.ones_like(rows, dtype=torch.float))
    tv = _tv(plain_counts, counts)
    assert tv.max() < 0.06, f"SJD with a store, batched, differs from plain sampling: TV per position {tv}"


@pytest.mark.parametrize("init", ["uniform", "above", "store"])
def test_sjd_samples_the_models_distribution(model, plain_counts, store, init):
    spec_counts = _histograms(model, DecodeOptions("sjd", window=3, init=init), 1500, store=store)
    tv = _tv(plain_counts, spec_counts)
    print(f"TV {init}: {tv}")
    assert tv.max() < 0.06, f"SJD ({init}) token distribution differs from plain sampling: TV per position {tv}"


def test_a_wrong_acceptance_rule_is_caught(model, plain_counts, monkeypatch):
    """Accepting every draft (no min(1, p/q) test) must fail the same check: the test has teeth."""
    real = speculative.verify

    def accept_all(draft, q, p, known, grouped, generator):
        real(draft, q, p, known, grouped, generator)  # the same random draws, then every draft taken
        return torch.ones_like(draft, dtype=torch.bool)
    monkeypatch.setattr(speculative, "verify", accept_all)
    tv = _tv(plain_counts, _histograms(model, DecodeOptions("sjd", window=3, init="uniform"), 1500))
    print(f"TV broken: {tv}")
    assert tv.max() > 0.15, f"a broken acceptance rule went unnoticed: TV {tv}"


def test_greedy_sjd_is_plain_greedy(model, store):
    greedy = SamplingParams(top_k=1, top_p_style="llamagen")
    cond = Conditioning((0, 1, 2), cfg=2.0)
    plain = generate_tokens(model, cond, None, greedy, torch.Generator().manual_seed(0))
    for init in ("uniform", "above", "store"):
        stats: dict = {}
        spec = generate_tokens(model, cond, None, greedy, torch.Generator().manual_seed(0),
                               decode=DecodeOptions("sjd", window=4, init=init), stats=stats, draft_store=store)
        assert torch.equal(spec.grids[0], plain.grids[0])
        assert 1 < stats["forwards"] <= GRID * GRID and stats["decode"] == "sjd"


def test_sjd_needs_fewer_forwards_when_drafts_are_good():
    """A model whose next token is (nearly) the token one row up: 'above' drafts are accepted."""
    torch.manual_seed(0)
    m = _row_model()
    with torch.no_grad():
        m.output.weight.zero_()  # uniform P: every draft is accepted with probability min(1, P/Q) = P(d)/1 ...
    stats_plain: dict = {}
    stats_sjd: dict = {}
    cond = Conditioning((1,), cfg=1.0)
    generate_tokens(m, cond, None, PARAMS, torch.Generator().manual_seed(0), stats=stats_plain)
    generate_tokens(m, cond, None, PARAMS, torch.Generator().manual_seed(0),
                    decode=DecodeOptions("sjd", window=8, init="uniform"), stats=stats_sjd)
    # ... and uniform drafts under a uniform P are accepted with probability 1: a whole window per forward
    assert stats_plain["forwards"] == 64 and stats_sjd["forwards"] == 1 + 63 // 8 + (63 % 8 > 0)


def _row_model() -> LlamaGen:
    torch.manual_seed(0)
    return LlamaGen(LlamaGenConfig(dim=32, n_layer=1, n_head=2, num_classes=3, vocab_size=V, block_size=64)).eval()


@pytest.mark.parametrize("cfg", [1.0, 2.0])
def test_a_store_holding_the_image_drafts_whole_rows(cfg):
    """Greedy decoding is one fixed grid; with that grid in the store (class 2) every window is accepted
    whole: 1 + 63/8 forwards instead of 64, the same tokens. The same store for another class, or a store
    of other grids, drafts nothing and leaves the Jacobi drafts."""
    m = _row_model()
    greedy = SamplingParams(top_k=1, top_p_style="llamagen")
    cond = Conditioning((2,), cfg=cfg)
    plain = generate_tokens(m, cond, None, greedy, torch.Generator().manual_seed(0)).grids[0]
    other = torch.randint(V, (5, 64), generator=torch.Generator().manual_seed(1))
    runs, per_forward, drafts = {}, {}, {}
    for name, store in [("right", DraftStore(torch.cat([other, plain.reshape(1, 64)]), torch.tensor([2] * 6))),
                        ("other class", DraftStore(plain.reshape(1, 64), torch.tensor([0]))),
                        ("unlabelled", DraftStore(plain.reshape(1, 64), None)),
                        ("none", None)]:
        stats: dict = {}
        out = generate_tokens(m, cond, None, greedy, torch.Generator().manual_seed(0), stats=stats,
                              decode=DecodeOptions("sjd", window=8), draft_store=store)
        assert torch.equal(out.grids[0], plain), name
        runs[name] = stats["forwards"]
        per_forward[name], drafts[name] = stats["tokens_per_forward"], stats["drafts"]
    assert runs["right"] == runs["unlabelled"] == 1 + 63 // 8 + 1, runs
    assert per_forward["right"] == {"1": 1, "7": 1, "8": 7} and drafts["right"] == "store", per_forward
    assert drafts["none"] == "above" and sum(int(k) * v for k, v in per_forward["none"].items()) == 64
    assert runs["other class"] == runs["none"] > runs["right"], runs


def test_store_drafts_keep_known_tokens():
    """Greedy inpainting with a store grid that matches the decoded tokens but not a kept one: the kept
    token stays and the result is plain greedy inpainting's."""
    m = _row_model()
    greedy = SamplingParams(top_k=1, top_p_style="llamagen")
    cond = Conditioning((1,), cfg=1.0)
    free = generate_tokens(m, cond, None, greedy, torch.Generator().manual_seed(0)).grids[0]
    known = torch.zeros(1, 8, 8, dtype=torch.bool)
    known[0, 2, 4] = True
    grid = torch.zeros(1, 8, 8, dtype=torch.int64)
    grid[0, 2, 4] = (int(free[0, 2, 4]) + 1) % V
    canvas = TokenCanvas("llamagen", "llamagen", [grid], [known])
    plain = generate_tokens(m, cond, canvas, greedy, torch.Generator().manual_seed(0)).grids[0]
    stats: dict = {}
    out = generate_tokens(m, cond, canvas, greedy, torch.Generator().manual_seed(0), stats=stats,
                          decode=DecodeOptions("sjd", init="store"), draft_store=DraftStore(free.reshape(1, 64), None))
    assert out.grids[0][0, 2, 4] == grid[0, 2, 4] and torch.equal(out.grids[0], plain)
    assert stats["forwards"] < 64


def test_store_init_needs_a_fitting_store(model):
    with pytest.raises(InvalidInputError, match="draft store"):
        generate_tokens(model, Conditioning((1,), cfg=1.0), None, PARAMS, torch.Generator().manual_seed(0),
                        decode=DecodeOptions("sjd", init="store"))
    with pytest.raises(InvalidInputError, match="tokens long"):
        generate_tokens(model, Conditioning((1,), cfg=1.0), None, PARAMS, torch.Generator().manual_seed(0),
                        decode=DecodeOptions("sjd"), draft_store=DraftStore(torch.zeros(2, 9, dtype=torch.long), None))
    with pytest.raises(InvalidInputError, match="integer token grids"):
        DraftStore(torch.zeros(2, 4), None)
    with pytest.raises(InvalidInputError, match="labels"):
        DraftStore(torch.zeros(2, 4, dtype=torch.long), torch.zeros(3, dtype=torch.long))


def test_store_proposals_match_context_and_class():
    tokens = torch.tensor([[1, 2, 3, 4, 5, 6], [1, 2, 9, 9, 9, 9], [7, 2, 8, 8, 8, 8]])
    store = DraftStore(tokens, torch.tensor([0, 1, 1]))
    committed = torch.tensor([[1, 2, 0, 0, 0, 0], [5, 2, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0]])
    drafts, found = store.propose(committed, torch.tensor([1, 1, 1]), start=2, width=3, context=2)
    assert found.tolist() == [True, False, False] and drafts[0].tolist() == [9, 9, 9]
    drafts, found = store.propose(committed, torch.tensor([0, 1, 1]), start=2, width=3, context=1)
    assert found.tolist() == [True, True, False] and drafts[:2].tolist() == [[3, 4, 5], [9, 9, 9]]
    drafts, found = DraftStore(tokens, None).propose(committed, None, start=2, width=2, context=2)
    assert found.tolist() == [True, False, False] and drafts[0].tolist() == [3, 4]


def test_known_tokens_are_kept_and_never_drafted(model):
    L = GRID * GRID
    known = torch.tensor([[[True, False], [False, True]]])
    grid = torch.tensor([[[5, 0], [0, 7]]])
    canvas = TokenCanvas("llamagen", "llamagen", [grid], [known])
    for strategy in ("sjd", "gsd"):
        out = generate_tokens(model, Conditioning((2,), cfg=2.0), canvas, PARAMS, torch.Generator().manual_seed(3),
                              decode=DecodeOptions(strategy, window=L))
        assert out.grids[0][0, 0, 0] == 5 and out.grids[0][0, 1, 1] == 7


def test_gsd_accepts_more_and_is_flagged_lossy(model):
    from arnodes.engine.generate.decoders import DECODERS
    assert DECODERS["sjd"].exact and not DECODERS["gsd"].exact
    s_sjd, s_gsd = 0, 0
    for seed in range(30):
        a: dict = {}
        b: dict = {}
        generate_tokens(model, Conditioning((1,), cfg=2.0), None, PARAMS, torch.Generator().manual_seed(seed),
                        decode=DecodeOptions("sjd", window=4), stats=a)
        generate_tokens(model, Conditioning((1,), cfg=2.0), None, PARAMS, torch.Generator().manual_seed(seed),
                        decode=DecodeOptions("gsd", window=4, group_mass=0.9), stats=b)
        s_sjd, s_gsd = s_sjd + a["forwards"], s_gsd + b["forwards"]
    assert s_gsd < s_sjd


@pytest.mark.parametrize("kwargs,needle", [(dict(strategy="beam"), "unknown decode strategy"),
                                           (dict(strategy="sjd", window=0), "window"),
                                           (dict(strategy="sjd", init="zeros"), "init"),
                                           (dict(strategy="sjd", group_mass=0.3), "gsd setting"),
                                           (dict(strategy="gsd", group_mass=1.5), "group_mass")])
def test_bad_options_are_user_errors(kwargs, needle):
    with pytest.raises(InvalidInputError, match=needle):
        DecodeOptions(**kwargs)


def test_speculative_decoding_is_refused_for_next_scale_models():
    with pytest.raises(InvalidInputError, match="next-scale"):
        DecodeOptions("sjd").check_family("var")


def test_tasks_take_the_decode_strategy():
    """Inpaint on the tiny raster model with sjd: the kept half is exact, the forward count is reported."""
    from test_workflows import TINY_LLAMAGEN, tiny_models_dir

    from arnodes.engine import tasks
    from arnodes.engine.loader import load_bundle
    bundle = load_bundle(str(tiny_models_dir() / TINY_LLAMAGEN))
    src = torch.rand(1, 3, 64, 64) * 2 - 1
    regen = torch.zeros(1, 64, 64)
    regen[:, 32:] = 1
    stats: dict = {}
    run = tasks.RunSettings(params=PARAMS, seed=1, decode=DecodeOptions("sjd", window=4), stats=stats)
    out = tasks.inpaint(bundle, Conditioning((1,), cfg=2.0), src, regen, run)
    assert torch.equal(out[:, :, :32], src[:, :, :32]) and stats["decode"] == "sjd" and 1 < stats["forwards"] <= 16
