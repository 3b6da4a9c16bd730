"""Transformer layers shared by the generator families."""
from __future__ import annotations

import itertools
import weakref

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    """``x * rsqrt(mean(x^2) + eps) * weight``, computed in float32 (LlamaGen's form)."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        out = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return out.type_as(x) * self.weight


DECODE_QUERIES = 4  # at most this many queries per row: a decode step's attention (one token per image)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None, *,
              is_causal: bool = False, scale: float | None = None, enable_gqa: bool = False) -> torch.Tensor:
    """``F.scaled_dot_product_attention``, except a half-precision decode step on the CPU: torch's fused
    CPU kernel runs one bfloat16 query over 128-256 keys 3-4x slower than the same product in float32
    (a fifth of a GPT-B bf16 decode step, AMD Zen 4), so there scores and softmax run in float32.
    Larger queries (a prompt's prefill, speculative windows) and training keep the fused kernel, which
    wins there. (VAR's attention stays fused: its decode-sized queries are its two first scales only.)"""
    if (q.device.type != "cpu" or q.dtype == torch.float32 or q.shape[-2] > DECODE_QUERIES or is_causal
            or torch.is_grad_enabled()):
        return F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype), attn_mask=mask, is_causal=is_causal,
                                              scale=scale, enable_gqa=enable_gqa)  # a cache may hold float32
    qf, kf, vf = q.float(), k.float(), v.float()
    if kf.shape[-3] != qf.shape[-3]:  # grouped-query attention: each key head serves several query heads
        kf = kf.repeat_interleave(qf.shape[-3] // kf.shape[-3], -3)
        vf = vf.repeat_interleave(qf.shape[-3] // vf.shape[-3], -3)
    scores = (qf @ kf.transpose(-1, -2)).mul_(qf.shape[-1] ** -0.5 if scale is None else scale)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    return (scores.softmax(-1) @ vf).to(q.dtype)


def find_multiple(n: int, k: int) -> int:
    return n if n % k == 0 else n + k - (n % k)


def _streamed_rows() -> dict[torch.dtype, tuple[int, int]]:
    """Row counts (per dtype) for which ``W @ x.T`` beats torch's CPU ``linear``, by the CPU's vector
    width. AVX-512: torch's float32 kernel already reads W once for 1-3 rows (~2x ``W @ x.T`` at 2 rows),
    ``W @ x.T`` wins from 4 to ~40 rows in float32. AVX2: ``W @ x.T`` was the faster float32 kernel
    from one row up to 64. bfloat16 has no entry: where oneDNN runs it natively its weights are packed
    (``_packed_dtypes``), elsewhere there is no native matmul to tune for. Weights that are packed skip
    this choice. bench/results/linear_kernels.json records the measuring CPU's figures."""
    if torch.backends.cpu.get_cpu_capability().startswith("AVX512"):
        return {torch.float32: (4, 40)}  # inclusive; bfloat16 there runs packed (``_packed_dtypes``)
    return {torch.float32: (1, 64)}


def _cpu_vendor() -> str:
    """The CPU's vendor id ("GenuineIntel", "AuthenticAMD", ...), "" where /proc/cpuinfo does not say."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def _packed_dtypes() -> frozenset[torch.dtype]:
    """Dtypes whose large CPU linears run on weights packed once into oneDNN's blocked layout.

    bfloat16: torch's CPU ``linear`` hands a bfloat16 weight to oneDNN, which re-lays it out on every
    call; packed once at load, the same kernel streams a decode step's weights 1.4-1.9x faster and
    computes the very same numbers. float32: torch's ``linear`` is MKL's sgemm, fast on Intel CPUs
    (it streams 1-3 rows at the memory bandwidth there) but not elsewhere: on an AMD Zen 4 the packed
    oneDNN kernel ran GPT-B's decode linears 1.3-2x faster (float rounding differs, as ``W @ x.T``'s
    does). bench/results/linear_kernels.json records the measuring CPU's figures.
    """
    if not (torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()):
        return frozenset()
    dtypes = {torch.bfloat16}
    if _cpu_vendor() not in ("GenuineIntel", ""):
        dtypes.add(torch.float32)
    return frozenset(dtypes)


_PACKED: weakref.WeakValueDictionary[int, Linear] = weakref.WeakValueDictionary()  # key -> packed module
_packed_keys = itertools.count()


PACKED_MIN_ROWS = 4  # fewer rows are padded with zeros up to this many (``packed_matmul``)


def pack_weight(weight: torch.Tensor) -> torch.Tensor:
    """A (out, in) weight in oneDNN's blocked layout; the hint (2 rows: a CFG decode step) picks the
    blocking, and every row count runs on it."""
    return torch.ops.mkldnn._reorder_linear_weight(weight, 2)


def packed_matmul(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.linear`` on a weight from ``pack_weight``. oneDNN streams a packed weight fastest from 4 rows
    up: 1-2 rows (a decode step at batch 1) ran 1.2-1.5x slower per weight byte on an AMD Zen 4
    (bench/results/linear_kernels.json), so fewer rows are padded with zeros to 4. Each row's result is
    bitwise the same either way; the extra rows cost nothing in a step that only streams weights."""
    rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
    if not 0 < rows < PACKED_MIN_ROWS:
        return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")
    padded = x.new_zeros(PACKED_MIN_ROWS, x.shape[-1])
    padded[:rows] = x.reshape(rows, x.shape[-1])
    out = torch.ops.mkldnn._linear_pointwise(padded, packed, bias, "none", [], "")
    return out[:rows].view(*x.shape[:-1], out.shape[-1])


@torch.library.custom_op("arnodes::packed_linear", mutates_args=())
def _packed_linear(x: torch.Tensor, bias: torch.Tensor | None, key: int, out_features: int) -> torch.Tensor:
    """The packed kernel as one opaque op, so a compiled step calls it instead of lowering it. The weight
    is found by key: a compiled graph cannot take an opaque oneDNN tensor as an input."""
    return packed_matmul(x, _PACKED[key].weight, bias)


@_packed_linear.register_fake
def _(x: torch.Tensor, bias: torch.Tensor | None, key: int, out_features: int) -> torch.Tensor:
    return x.new_empty(*x.shape[:-1], out_features)


class Linear(nn.Linear):
    """``nn.Linear`` with a faster kernel choice for a few rows on the CPU (same weights, same keys).

    A decode step (one token per image, doubled by CFG) or one of VAR's coarse scales multiplies
    2-64 rows by a large weight: the step only streams the weight from memory. Torch's CPU
    ``linear`` runs many of those shapes as ``x @ W.T`` well below the memory bandwidth, and can
    get slower, not faster, with a second thread (measured: bench/README.md, "few-row linears").
    ``W @ x.T`` reads each weight row in the layout it is stored. Which kernel wins depends on the
    CPU and the dtype (``_streamed_rows``, ``_packed_dtypes``): a loaded generator's large weights are
    packed for oneDNN where that wins (``pack_for_cpu``), else the few-row shapes take ``W @ x.T``. The
    choice is fixed per machine, so a replayed workflow computes the same numbers. Results equal
    ``F.linear`` up to float rounding.

    A packed weight is an opaque oneDNN tensor: moving or casting the module (``.to``, ``.float()``)
    unpacks it first, a state dict holds the plain weight, and autograd or a dtype other than the
    weight's (autocast) computes with the plain form.
    """

    min_weight = 1 << 18  # elements (1 MB of float32): smaller weights stay in cache, where torch's kernel is as fast
    streamed_rows = _streamed_rows()
    packed_dtypes = _packed_dtypes()

    _packed_key: int | None = None  # set while the weight is packed (plain attributes: a compiled step reads them)
    _packed_dtype: torch.dtype | None = None

    def pack_for_cpu(self) -> bool:
        """Pack the weight for oneDNN where this CPU and dtype gain from it; True when it did."""
        w = self.weight
        if (self._packed_key is not None or w.device.type != "cpu" or w.dtype not in self.packed_dtypes
                or w.numel() < self.min_weight):
            return False
        self.weight = nn.Parameter(pack_weight(w.detach()), requires_grad=False)
        self._packed_key, self._packed_dtype = next(_packed_keys), w.dtype
        _PACKED[self._packed_key] = self
        return True

    def unpack(self) -> None:
        if self._packed_key is not None:
            _PACKED.pop(self._packed_key, None)
            self._packed_key = self._packed_dtype = None
            self.weight = nn.Parameter(self.weight.to_dense(), requires_grad=False)

    def _apply(self, fn, recurse=True):
        self.unpack()
        return super()._apply(fn, recurse)

    def _save_to_state_dict(self, destination, prefix, keep_vars) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self._packed_key is not None:
            destination[prefix + "weight"] = self.weight.to_dense()

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        self.unpack()
        super()._load_from_state_dict(*args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._packed_key is not None:
            return self._packed_forward(x)
        rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
        lo, hi = self.streamed_rows.get(x.dtype, (1, 0))
        if not (x.device.type == "cpu" and x.dtype == self.weight.dtype and lo <= rows <= hi
                and self.weight.numel() >= self.min_weight):
            return F.linear(x, self.weight, self.bias)
        x_MK = x.reshape(rows, x.shape[-1])
        if self.bias is None:
            out_NM = torch.mm(self.weight, x_MK.t())
        else:
            out_NM = torch.addmm(self.bias.unsqueeze(1), self.weight, x_MK.t())
        return out_NM.t().contiguous().view(*x.shape[:-1], self.out_features)

    def _packed_forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != self._packed_dtype or x.device.type != "cpu" or (torch.is_grad_enabled() and x.requires_grad):
            return F.linear(x, self.weight.to_dense(), self.bias)
        if torch.compiler.is_compiling():
            return _packed_linear(x, self.bias, self._packed_key, self.out_features)
        return packed_matmul(x, self.weight, self.bias)


def pack_for_cpu(model: nn.Module) -> nn.Module:
    """Pack every large ``Linear`` of a CPU inference model for oneDNN (see ``_packed_dtypes``).

    Weights read memory-mapped (a zip-format .pt checkpoint) live in the file's map, which stays
    resident as long as any of its tensors does: once anything is packed, the other parameters and
    buffers are copied out of it too, or the file's pages would stay in memory beside the packed
    copies. (safetensors files are read into memory of their own: ``checkpoint.read_checkpoint``.)"""
    packed = [module.pack_for_cpu() for module in model.modules() if isinstance(module, Linear)]
    if any(packed):
        for param in model.parameters():  # deduplicated: tied parameters stay tied
            if not param.is_mkldnn:
                param.data = param.data.clone()
        for module in model.modules():
            for name, buf in module._buffers.items():
                if buf is not None:
                    module._buffers[name] = buf.clone()
    return model
