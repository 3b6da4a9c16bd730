"""CPU fast paths that must not change what is computed: weights packed for oneDNN (layers.pack_for_cpu),
half-precision decode attention in float32 (layers.attention) with its float32 KV cache, and checkpoint
tensors that do not keep the file mapped (checkpoint.read_checkpoint)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from test_workflows import TINY_LLAMAGEN, tiny_models_dir

from arnodes.engine.checkpoint import read_checkpoint
from arnodes.engine.conditioning import Conditioning
from arnodes.engine.generate import generate
from arnodes.engine.kv_cache import decode_cache_dtype
from arnodes.engine.layers import PACKED_MIN_ROWS, Linear, attention, pack_for_cpu
from arnodes.engine.loader import load_bundle
from arnodes.engine.memory import working_set
from arnodes.engine.sampling import SamplingParams

PACKED = sorted(Linear.packed_dtypes, key=str)


def test_this_cpu_packs_bfloat16():
    """The CI and development machines have AVX-512: were bf16 not packed there, the tests below would test nothing."""
    if torch.backends.cpu.get_cpu_capability().startswith("AVX512"):
        assert torch.bfloat16 in Linear.packed_dtypes


def _packed_pair(dtype: torch.dtype, bias: bool = True) -> tuple[Linear, torch.Tensor, torch.Tensor | None]:
    torch.manual_seed(0)
    lin = Linear(1024, 512, bias=bias).to(dtype).requires_grad_(False)  # above min_weight
    weight, b = lin.weight.detach().clone(), None if lin.bias is None else lin.bias.detach().clone()
    assert lin.pack_for_cpu() and lin.weight.is_mkldnn
    return lin, weight, b


@pytest.mark.parametrize("dtype", PACKED)
def test_few_rows_run_padded_and_get_the_very_numbers_of_their_own_rows(dtype, monkeypatch):
    """1-3 rows (a decode step at batch 1) stream the packed weight slowly: they run padded to 4 rows,
    and each row's result is bitwise what the kernel gives those rows alone."""
    lin, weight, b = _packed_pair(dtype)
    kernel = torch.ops.mkldnn._linear_pointwise
    seen: list[int] = []

    class Spy:  # the op namespace cannot be patched per attribute; a stand-in records the rows it is given
        def _linear_pointwise(self, x, *args):
            seen.append(x.numel() // x.shape[-1])
            return kernel(x, *args)
    for shape in [(1, 1024), (2, 1024), (1, 3, 1024), (5, 1024)]:
        x = torch.randn(shape).to(dtype)
        alone = kernel(x, lin.weight, lin.bias, "none", [], "")
        seen.clear()
        monkeypatch.setattr(torch.ops, "mkldnn", Spy())
        with torch.no_grad():
            out = lin(x)
        monkeypatch.undo()
        rows = x.numel() // x.shape[-1]
        assert seen == [max(rows, PACKED_MIN_ROWS)] and out.shape == alone.shape
        assert torch.equal(out, alone)


@pytest.mark.parametrize("dtype", PACKED)
@pytest.mark.parametrize("shape", [(1, 1024), (2, 1024), (2, 3, 1024), (300, 1024)])
def test_a_packed_linear_computes_what_torch_linear_does(dtype, shape):
    for bias in (True, False):
        lin, weight, b = _packed_pair(dtype, bias)
        x = torch.randn(shape).to(dtype)
        with torch.no_grad():
            out, ref = lin(x), F.linear(x, weight, b)
        assert out.shape == ref.shape and out.dtype == dtype
        if dtype == torch.bfloat16:  # the same oneDNN kernel either way: the very same numbers
            assert torch.equal(out, ref)
        else:
            torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("dtype", PACKED)
def test_a_packed_module_saves_casts_reloads_and_trains_as_a_plain_one(dtype):
    lin, weight, b = _packed_pair(dtype)
    sd = lin.state_dict()
    assert not sd["weight"].is_mkldnn and torch.equal(sd["weight"], weight)
    x = torch.randn(4, 1024).to(dtype).requires_grad_()
    lin(x).float().sum().backward()  # autograd takes the plain form
    x_ref = x.detach().clone().requires_grad_()
    F.linear(x_ref, weight, b).float().sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad)
    lin.load_state_dict({"weight": weight * 2, "bias": b})
    assert not lin.weight.is_mkldnn and torch.equal(lin.weight, weight * 2)
    lin.pack_for_cpu()
    as_float = lin.float()  # a cast unpacks first
    assert not as_float.weight.is_mkldnn and as_float.weight.dtype == torch.float32


@pytest.mark.parametrize("dtype", PACKED)
def test_a_packed_linear_compiles(dtype):
    lin, weight, b = _packed_pair(dtype)
    step = torch.compile(lambda t: lin(t) * 2, dynamic=True, fullgraph=True)
    with torch.no_grad():
        for rows in (2, 3):
            x = torch.randn(rows, 1024).to(dtype)
            torch.testing.assert_close(step(x), F.linear(x, weight, b) * 2, atol=1e-4, rtol=1e-4)


def test_a_bf16_generator_loaded_for_the_cpu_runs_packed_and_draws_the_same_tokens(monkeypatch):
    path = str(tiny_models_dir() / TINY_LLAMAGEN)
    monkeypatch.setattr(Linear, "min_weight", 1 << 40)
    plain = load_bundle(path, dtype=torch.bfloat16)
    monkeypatch.setattr(Linear, "min_weight", 0)  # the tiny model's weights count as large
    packed = load_bundle(path, dtype=torch.bfloat16)
    kinds = {m.weight.is_mkldnn for m in packed.generator.modules() if isinstance(m, Linear)}
    assert kinds == {True} and not any(m.weight.is_mkldnn for m in plain.generator.modules() if isinstance(m, Linear))
    cond, params = Conditioning((0, 1), cfg=2.0), SamplingParams(top_k=0, top_p=1.0, top_p_style="llamagen")
    a = generate(plain, cond, params=params, seed=5).grids[0]
    b = generate(packed, cond, params=params, seed=5).grids[0]
    assert torch.equal(a, b)


def test_packing_copies_the_rest_out_of_the_state_dict():
    lin_model = torch.nn.Sequential(Linear(1024, 512), torch.nn.LayerNorm(512)).to(torch.bfloat16)
    norm_before = lin_model[1].weight.data_ptr()
    pack_for_cpu(lin_model)
    assert lin_model[0].weight.is_mkldnn and lin_model[1].weight.data_ptr() != norm_before


def test_half_precision_decode_attention_matches_float():
    torch.manual_seed(0)
    q = torch.randn(2, 4, 1, 16).bfloat16()
    k, v = torch.randn(2, 2, 10, 16), torch.randn(2, 2, 10, 16)  # grouped heads; a float32 cache
    mask = torch.ones(2, 1, 1, 10, dtype=torch.bool)
    mask[0, ..., 6:] = False  # row 0 sees its first 6 keys only
    with torch.no_grad():
        out = attention(q, k, v, mask, enable_gqa=True)
    kr, vr = k.double().repeat_interleave(2, 1), v.double().repeat_interleave(2, 1)
    scores = (q.double() @ kr.transpose(-1, -2)) / 4
    ref = scores.masked_fill(~mask, float("-inf")).softmax(-1) @ vr
    assert out.dtype == torch.bfloat16 and out.shape == (2, 4, 1, 16)
    torch.testing.assert_close(out.double(), ref, atol=2e-2, rtol=2e-2)
    with torch.no_grad():  # larger queries: the fused kernel, same answer
        big = attention(q.expand(2, 4, 8, 16).contiguous(), k.bfloat16(), v.bfloat16(), mask, enable_gqa=True)
    torch.testing.assert_close(big[:, :, :1].double(), ref, atol=3e-2, rtol=3e-2)


def test_half_precision_raster_models_keep_a_float32_cache_on_the_cpu():
    assert decode_cache_dtype(torch.bfloat16, "cpu") == torch.float32
    assert decode_cache_dtype(torch.bfloat16, "cuda") == torch.bfloat16
    assert decode_cache_dtype(torch.float32, "cpu") == torch.float32
    bundle = load_bundle(str(tiny_models_dir() / TINY_LLAMAGEN), dtype=torch.bfloat16)
    generate(bundle, Conditioning((0,), cfg=2.0), params=SamplingParams(top_k=0), seed=0)
    cache = bundle.generator.layers[0].attention.kv_cache
    assert cache.k_cache.dtype == torch.float32
    as_float = load_bundle(str(tiny_models_dir() / TINY_LLAMAGEN), dtype=torch.float32)
    assert working_set(bundle, 2).kv_cache == working_set(as_float, 2).kv_cache  # counted at 4 bytes a value


def test_checkpoint_tensors_own_their_memory(tmp_path):
    tensors = {"w": torch.randn(64, 32), "h": torch.randn(5).bfloat16(), "m": torch.tensor([True, False, True]),
               "i": torch.arange(7), "s": torch.tensor(3.5), "e": torch.zeros(0, 4)}
    path = tmp_path / "t.safetensors"
    save_file(tensors, str(path))
    back = read_checkpoint(path)
    assert set(back) == set(tensors)
    for name, t in tensors.items():
        assert back[name].dtype == t.dtype and torch.equal(back[name], t)
        assert back[name].untyped_storage().nbytes() == t.numel() * t.element_size()  # not a view of a file map
