"""Weight-only int8 / int4 quantization of the transformer Linear layers.

Decode is memory-bound (DESIGN.md section 7): storing the block weights in 8 or 4
bits cuts the bytes each step reads. Layered like gpt-fast's ``quantize.py``:

1. primitives: tensor -> (integers, scales) -> tensor;
2. modules: :class:`WeightOnlyInt8Linear`, :class:`WeightOnlyInt4Linear`;
3. converter: :func:`quantize_model` swaps the block Linears of VAR / LlamaGen,
   :func:`save_quantized` / :func:`load_quantized_into` store the result once.

Formats (also the on-disk layout):

- int8: symmetric per output channel. ``weight`` int8 (N, K), ``scales`` (N,);
  w ~= weight * scales[:, None].
- int4-gG: asymmetric per group of G input columns (gpt-fast / torch kernel convention).
  ``weight`` uint8 (N, K/2), column 2j in the high nibble, 2j+1 in the low one, values
  q in [0, 15]; ``scales_and_zeros`` (K/G, N, 2) = (scale, zero); w ~= (q - 8) * scale + zero.

What is quantized (measured by ``bench/quantize_accuracy.py``; numbers in bench/README.md):

- the transformer-block Linears, in the requested mode;
- the output head (VAR ``head``, LlamaGen ``output``) in the requested mode;
- LlamaGen's token embedding table in int8 (one scale per row; only looked-up rows are
  dequantized) in every quantized mode. For GPT-B the two vocabulary tables are 23% of the
  weights: left in float, the whole model cannot get under 55% / 30% of bf16. int4 in the
  table costs more than int4 in the head (GPT-B, random init, int4-g128 logits cosine:
  head int4 + table int8 0.9966, head int8 + table int4 0.9933), so the table stays int8.

Norms, class embeddings, VAR's small input projections and the tokenizers stay in float.
A layer whose input width is not a multiple of the group size stays float too;
:func:`quantize_model` records it in ``model.quant_skipped`` and logs it.
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .choices import QUANTS
from .checkpoint import check_state_dict
from .errors import CheckpointError, UnknownNameError, UnsupportedError
from .layers import Linear

logger = logging.getLogger(__name__)

QUANT_MODES = QUANTS  # the one list (engine/choices.py)
FORMAT = "arnodes-quantized"
FORMAT_VERSION = "1"
SERVED_DEVICE_TYPES = ("cpu", "cuda")  # the dequantize path runs on both; kernels are used when present


@dataclass(frozen=True)
class QuantSpec:
    mode: str
    bits: int  # 0 = float (no quantization)
    group_size: int | None = None


def parse_quant(name: str) -> QuantSpec:
    """A quant mode by its exact name; a miss lists the modes."""
    if name not in QUANT_MODES:
        raise UnknownNameError(f"unknown quantization {name!r}; available: {list(QUANT_MODES)}")
    if name == "none":
        return QuantSpec("none", 0)
    if name == "int8":
        return QuantSpec("int8", 8)
    return QuantSpec(name, 4, int(name.split("-g")[1]))


def check_supported(mode: str, device: torch.device | str) -> QuantSpec:
    """Refuse a mode the given device cannot serve, saying what it can."""
    spec = parse_quant(mode)
    dev = torch.device(device)
    if spec.bits == 0:
        return spec
    if dev.type not in SERVED_DEVICE_TYPES:
        raise UnsupportedError(f"quantization {mode!r} is not available on {dev.type!r}; on {dev.type!r} only "
                               f"'none' is; the quantized modes {list(QUANT_MODES[1:])} run on "
                               f"{list(SERVED_DEVICE_TYPES)}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UnsupportedError(f"quantization {mode!r} on 'cuda' was requested but no CUDA device is available "
                               f"here; on 'cpu' the modes {list(QUANT_MODES)} are available")
    return spec


# ---- Quantization primitives -------------------------------------------------------------------
def quantize_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, K) float -> int8 (N, K), float32 scales (N,); symmetric, one scale per output channel."""
    w = w.detach().float()
    scales = (w.abs().amax(dim=1) / 127.0).clamp_min(1e-8)  # (N,)
    q = torch.round(w / scales[:, None]).clamp_(-128, 127).to(torch.int8)  # (N, K)
    return q, scales


def dequantize_int8(q: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return (q.to(torch.float32) * scales.to(torch.float32)[:, None]).to(dtype)  # (N, K)


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """(N, K) integers in [0, 15] -> uint8 (N, K/2); column 2j in the high nibble."""
    q = q.to(torch.uint8)
    return (q[:, 0::2] << 4) | q[:, 1::2]


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """uint8 (N, K/2) -> uint8 (N, K) in [0, 15]."""
    return torch.stack((packed >> 4, packed & 0x0F), dim=-1).reshape(packed.shape[0], -1)


def quantize_int4(w: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, K) float -> packed uint8 (N, K/2) and scales_and_zeros (K/G, N, 2) float32.

    Asymmetric min/max per group, so a group that is all positive wastes no codes.
    """
    N, K = w.shape
    if K % group_size or group_size % 2:
        raise UnsupportedError(f"int4: input width {K} is not a multiple of the group size {group_size}")
    g = w.detach().float().reshape(N, K // group_size, group_size)  # (N, G, g)
    lo, hi = g.amin(dim=-1), g.amax(dim=-1)  # (N, G)
    scales = ((hi - lo) / 15.0).clamp_min(1e-8)
    q = torch.round((g - lo[..., None]) / scales[..., None]).clamp_(0, 15)  # (N, G, g)
    zeros = lo + 8.0 * scales  # so that w = (q - 8) * scale + zero
    sz = torch.stack((scales, zeros), dim=-1).transpose(0, 1).contiguous()  # (G, N, 2)
    return pack_int4(q.reshape(N, K)), sz


def dequantize_int4(packed: torch.Tensor, scales_and_zeros: torch.Tensor, group_size: int,
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
    N = packed.shape[0]
    q = unpack_int4(packed).to(torch.float32).reshape(N, -1, group_size)  # (N, G, g)
    sz = scales_and_zeros.to(torch.float32).transpose(0, 1)  # (N, G, 2)
    w = (q - 8.0) * sz[..., 0:1] + sz[..., 1:2]  # (N, G, g)
    return w.reshape(N, -1).to(dtype)  # (N, K)


# ---- Torch kernels, probed once per (device type, dtype) ----------------------------------------
_KERNEL_OK: dict[tuple[str, str, torch.dtype], bool] = {}


def _probe(name: str, device: torch.device, dtype: torch.dtype, fn) -> bool:
    key = (name, device.type, dtype)
    if key not in _KERNEL_OK:
        try:
            fn()
            _KERNEL_OK[key] = True
        except (RuntimeError, NotImplementedError, AttributeError) as e:
            logger.info("%s kernel unavailable on %s/%s (%s); dequantizing instead", name, device.type, dtype,
                        str(e).splitlines()[0] if str(e) else type(e).__name__)
            _KERNEL_OK[key] = False
    return _KERNEL_OK[key]


def kernel_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype a quantized layer computes in: x's, except float32 on CPU, which runs in bfloat16.

    torch's CPU int8 / int4 weight kernels are fast only in bf16 (measured on this project's
    2-core CPU: the fp32 int8 kernel is ~10x slower than its bf16 form, the fp32 int4 one ~70x),
    so a float32 model's quantized block layers round their activations to bf16 and back. int8
    heads are ``exact`` (dequantize, then a float32 matmul): rounding the logits to bf16 flipped
    1.6% of near-tied argmaxes of GPT-B at random init (teacher-forced agreement 0.965 -> 0.949).
    int4 heads keep the bf16 kernel: dequantizing a 16384-row int4 head every step costs more than
    the whole float step, and int4's bar is cosine only."""
    return torch.bfloat16 if x.device.type == "cpu" and x.dtype == torch.float32 else x.dtype


def int8_kernel_ok(device: torch.device, dtype: torch.dtype) -> bool:
    """torch's ``_weight_int8pack_mm`` on the CPU, checked by a tiny call.

    Not on CUDA: torch's CUDA form is one thread per output element in float32 (no tensor cores,
    the weights read again for every row). There the layer dequantizes, then matmuls: the form
    inductor fuses into one weight-streaming kernel in the compiled decode step (the int8 recipe of
    pytorch-labs/gpt-fast), and cuBLAS serves the many-row calls (VAR scales, prefill)."""
    if device.type != "cpu":
        return False

    def run():
        x = torch.ones(1, 32, device=device, dtype=dtype)
        w = torch.ones(8, 32, device=device, dtype=torch.int8)
        torch.ops.aten._weight_int8pack_mm(x, w, torch.ones(8, device=device, dtype=dtype))
    return _probe("int8pack_mm", device, dtype, run)


def int4_kernel_ok(device: torch.device, dtype: torch.dtype) -> bool:
    """torch's bf16 int4 kernels: ``_weight_int4pack_mm`` on CUDA (sm80+), ``..._for_cpu`` on CPU."""
    if dtype != torch.bfloat16 or device.type not in ("cpu", "cuda"):
        return False

    def run():
        w = torch.zeros(16, 64, device=device, dtype=torch.uint8)  # packed: N 16, K 128
        packed = _int4_kernel_layout(w)
        sz = torch.ones(2, 16, 2, device=device, dtype=dtype)
        _int4_kernel_mm(torch.ones(1, 128, device=device, dtype=dtype), packed, 64, sz)
    return _probe("int4pack_mm", device, dtype, run)


def _int4_kernel_layout(packed: torch.Tensor) -> torch.Tensor:
    """Our packed (N, K/2) uint8 -> the device kernel's own weight layout."""
    if packed.device.type == "cpu":
        return torch.ops.aten._convert_weight_to_int4pack_for_cpu(unpack_int4(packed).to(torch.int32), 2)
    return torch.ops.aten._convert_weight_to_int4pack(packed.contiguous(), 2)


def _int4_kernel_mm(x: torch.Tensor, kernel_weight: torch.Tensor, group_size: int,
                    scales_and_zeros: torch.Tensor) -> torch.Tensor:
    if x.device.type == "cpu":
        return torch.ops.aten._weight_int4pack_mm_for_cpu(x, kernel_weight, group_size, scales_and_zeros)
    return torch.ops.aten._weight_int4pack_mm(x, kernel_weight, group_size, scales_and_zeros)


# ---- Quantized modules -------------------------------------------------------------------------
class WeightOnlyInt8Linear(nn.Module):
    """y = x @ (weight * scales)^T + bias, weight int8; the scale is applied after the matmul.

    ``exact``: compute in x's own dtype (set for heads: bf16-rounded logits flip near-ties)."""

    exact = False

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight", torch.empty(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("scales", torch.empty(out_features, dtype=dtype, device=device))
        self.bias = nn.Parameter(torch.empty(out_features, dtype=dtype, device=device), requires_grad=False) \
            if bias else None

    @classmethod
    def from_float(cls, linear: nn.Linear) -> "WeightOnlyInt8Linear":
        w = linear.weight
        m = cls(linear.in_features, linear.out_features, linear.bias is not None, device=w.device, dtype=w.dtype)
        q, scales = quantize_int8(w)
        m.weight, m.scales = q, scales.to(w.dtype)
        if linear.bias is not None:
            m.bias = nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        return m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, self.in_features)  # (M, K)
        kd = x.dtype if self.exact else kernel_dtype(x)
        if not (x.device.type == "cpu" and kd == torch.float32) and int8_kernel_ok(x.device, kd):
            y = torch.ops.aten._weight_int8pack_mm(x2.to(kd).contiguous(), self.weight, self.scales.to(kd))
            y = y.to(x.dtype)  # (M, N)
        else:
            y = F.linear(x2, self.weight.to(x.dtype)) * self.scales.to(x.dtype)
        if self.bias is not None:
            y = y + self.bias.to(x.dtype)
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class WeightOnlyInt4Linear(nn.Module):
    """Group-wise int4 through torch's bf16 int4 kernel (CPU or CUDA); else dequantize, then matmul.

    Each kernel wants its own weight layout: it is made once per device and kept in
    ``_kernel_weight`` (not in the state_dict), next to the canonical weight.
    ``exact``: as for :class:`WeightOnlyInt8Linear`.
    """

    exact = False

    def __init__(self, in_features: int, out_features: int, bias: bool = True, group_size: int = 128,
                 device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        if in_features % group_size:
            raise UnsupportedError(f"int4: in_features {in_features} is not a multiple of the group size {group_size}")
        self.in_features, self.out_features, self.group_size = in_features, out_features, group_size
        self.register_buffer("weight", torch.empty(out_features, in_features // 2, dtype=torch.uint8, device=device))
        self.register_buffer("scales_and_zeros", torch.empty(in_features // group_size, out_features, 2,
                                                             dtype=dtype, device=device))
        self.bias = nn.Parameter(torch.empty(out_features, dtype=dtype, device=device), requires_grad=False) \
            if bias else None
        self._kernel_weight: torch.Tensor | None = None

    @classmethod
    def from_float(cls, linear: nn.Linear, group_size: int) -> "WeightOnlyInt4Linear":
        w = linear.weight
        m = cls(linear.in_features, linear.out_features, linear.bias is not None, group_size, w.device, w.dtype)
        packed, sz = quantize_int4(w, group_size)
        m.weight, m.scales_and_zeros = packed, sz.to(w.dtype)
        if linear.bias is not None:
            m.bias = nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        return m

    def _kernel_ready(self, x: torch.Tensor, dtype: torch.dtype) -> bool:
        k_ok = self.in_features % 128 == 0 or x.device.type == "cpu"  # the CUDA kernel tiles K by 128
        if not (int4_kernel_ok(x.device, dtype) and self.out_features % 16 == 0 and k_ok):
            return False
        if self._kernel_weight is None or self._kernel_weight.device != x.device:
            self._kernel_weight = _int4_kernel_layout(self.weight)
        return True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, self.in_features)  # (M, K)
        kd = x.dtype if self.exact else kernel_dtype(x)
        if self._kernel_ready(x2, kd):
            y = _int4_kernel_mm(x2.to(kd).contiguous(), self._kernel_weight, self.group_size,
                                self.scales_and_zeros.to(kd)).to(x.dtype)
        else:
            w = dequantize_int4(self.weight, self.scales_and_zeros, self.group_size, x.dtype)  # (N, K)
            y = F.linear(x2, w)
        if self.bias is not None:
            y = y + self.bias.to(x.dtype)
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"group_size={self.group_size}, bias={self.bias is not None}")


class WeightOnlyInt8Embedding(nn.Module):
    """Embedding table in int8 with one scale per row; only the looked-up rows are dequantized."""

    def __init__(self, num_embeddings: int, embedding_dim: int, device: torch.device | str | None = None,
                 dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.register_buffer("weight", torch.empty(num_embeddings, embedding_dim, dtype=torch.int8, device=device))
        self.register_buffer("scales", torch.empty(num_embeddings, dtype=dtype, device=device))

    @classmethod
    def from_float(cls, emb: nn.Embedding) -> "WeightOnlyInt8Embedding":
        w = emb.weight
        m = cls(emb.num_embeddings, emb.embedding_dim, w.device, w.dtype)
        q, scales = quantize_int8(w)
        m.weight, m.scales = q, scales.to(w.dtype)
        return m

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.weight[idx].to(self.scales.dtype) * self.scales[idx].unsqueeze(-1)  # (*idx, D)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}"


# ---- Model converter ---------------------------------------------------------------------------
TARGET_PATTERNS = (
    # VAR blocks: attention, FFN and the per-block AdaLN projection
    re.compile(r"blocks\.\d+\.(attn\.(mat_qkv|proj)|ffn\.(fc1|fc2)|ada_lin\.1)"),
    # LlamaGen layers: attention and SwiGLU FFN
    re.compile(r"layers\.\d+\.(attention\.(wqkv|wo)|feed_forward\.(w1|w2|w3))"),
)
HEAD_PATTERN = re.compile(r"head|output")  # VAR / LlamaGen logits projection: the requested mode
EMBEDDING_PATTERN = re.compile(r"tok_embeddings")  # LlamaGen token table: int8 in every quantized mode
_LINEARS = (nn.Linear, WeightOnlyInt8Linear, WeightOnlyInt4Linear)
_EMBEDDINGS = (nn.Embedding, WeightOnlyInt8Embedding)


def target_layers(model: nn.Module) -> list[tuple[str, nn.Module, str]]:
    """(name, module, role) of every layer the converter handles; role is 'block', 'head' or 'embedding'."""
    found = []
    for name, m in model.named_modules():
        if isinstance(m, _LINEARS) and any(p.fullmatch(name) for p in TARGET_PATTERNS):
            found.append((name, m, "block"))
        elif isinstance(m, _LINEARS) and HEAD_PATTERN.fullmatch(name):
            found.append((name, m, "head"))
        elif isinstance(m, _EMBEDDINGS) and EMBEDDING_PATTERN.fullmatch(name):
            found.append((name, m, "embedding"))
    return found


def target_linears(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The transformer-block Linear layers (float or already quantized)."""
    return [(name, m) for name, m, role in target_layers(model) if role == "block"]


def quant_mode_of(model: nn.Module) -> str:
    return getattr(model, "quant_mode", "none")


def _swap(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def _quantized_linear(lin: nn.Linear, bits: int, group_size: int | None, from_weights: bool) -> nn.Module:
    w = lin.weight
    if bits == 8:
        return WeightOnlyInt8Linear.from_float(lin) if from_weights else WeightOnlyInt8Linear(
            lin.in_features, lin.out_features, lin.bias is not None, w.device, w.dtype)
    return WeightOnlyInt4Linear.from_float(lin, group_size) if from_weights else WeightOnlyInt4Linear(
        lin.in_features, lin.out_features, lin.bias is not None, group_size, w.device, w.dtype)


def _quantized_embedding(emb: nn.Embedding, from_weights: bool) -> nn.Module:
    w = emb.weight
    return WeightOnlyInt8Embedding.from_float(emb) if from_weights else WeightOnlyInt8Embedding(
        emb.num_embeddings, emb.embedding_dim, w.device, w.dtype)


def _convert(model: nn.Module, spec: QuantSpec, from_weights: bool) -> nn.Module:
    """Replace the target layers; ``from_weights=False`` makes empty modules (a file fills them)."""
    current = quant_mode_of(model)
    if current != "none":
        raise UnsupportedError(f"model is already quantized ({current!r}); load the float model to requantize")
    skipped: dict[str, str] = {}
    targets = target_layers(model)
    if spec.bits and not any(role == "block" for _, _, role in targets):
        raise UnsupportedError(f"{type(model).__name__} has no transformer Linear layers the quantizer knows "
                               f"(patterns: {[p.pattern for p in TARGET_PATTERNS]})")
    model.quant_mode, model.quant_skipped = spec.mode, skipped
    if not spec.bits:
        return model
    for name, layer, role in targets:
        if role == "embedding":
            _swap(model, name, _quantized_embedding(layer, from_weights))
            continue
        if spec.bits == 4 and layer.in_features % spec.group_size:
            skipped[name] = f"in_features {layer.in_features} not a multiple of group size {spec.group_size}"
            continue
        new = _quantized_linear(layer, spec.bits, spec.group_size, from_weights)
        new.exact = role == "head" and spec.bits == 8  # int8 logits keep the model's precision (kernel_dtype)
        _swap(model, name, new)
    if skipped:
        logger.warning("%s: %d layer(s) kept in float: %s", spec.mode, len(skipped),
                       "; ".join(f"{k} ({v})" for k, v in skipped.items()))
    return model


@torch.no_grad()
def quantize_model(model: nn.Module, mode: str) -> nn.Module:
    """Quantize the transformer-block Linears of ``model`` in place (``none``: no change); returns it."""
    spec = parse_quant(mode)
    if spec.bits == 0:
        return model
    for m in model.modules():  # weights packed for the CPU (layers.pack_for_cpu) quantize from their plain form
        if isinstance(m, Linear):
            m.unpack()
    return _convert(model, spec, from_weights=True)


def quantized_bytes(model: nn.Module, float_dtype: torch.dtype | None = None) -> dict[str, int]:
    """Bytes of the block Linears, of every layer the converter handles, and of the whole module.

    ``float_dtype``: count floating-point tensors as if stored in that dtype (bf16 sizes without a copy)."""
    float_size = torch.empty((), dtype=float_dtype).element_size() if float_dtype is not None else None

    def nbytes(t: torch.Tensor) -> int:
        return t.numel() * (float_size if float_size and t.is_floating_point() else t.element_size())

    def size(ms):
        return sum(nbytes(t) for m in ms for t in list(m.parameters()) + list(m.buffers()))
    layers = target_layers(model)
    return {"block_linears": size(m for _, m, role in layers if role == "block"),
            "quantized_layers": size(m for _, m, _ in layers),
            "total": size([model])}


def planned_bytes(model: nn.Module, mode: str, float_dtype: torch.dtype | None = None) -> int:
    """``model``'s bytes once quantized in ``mode``, without converting it (``model`` may live on the meta
    device): the converter's layers at the mode's bit width plus their scales (embeddings at 8 bits), every
    other tensor as stored or in ``float_dtype`` (so are layers too narrow for the group size). The model
    cache sizes a load with it before reading any weight."""
    spec = parse_quant(mode)

    def float_bytes(t: torch.Tensor) -> int:
        return (float_dtype or t.dtype).itemsize if t.is_floating_point() else t.element_size()
    narrow: dict[int, int] = {}  # id(weight) -> its bytes quantized, scales included
    for _, m, role in target_layers(model) if spec.bits else ():
        w = getattr(m, "weight", None)
        if not isinstance(w, torch.Tensor) or w.ndim != 2:
            continue
        rows, cols = w.shape
        scale = float_bytes(w)
        if role == "embedding" or spec.bits == 8:
            narrow[id(w)] = rows * cols + rows * scale
        elif cols % spec.group_size == 0:
            narrow[id(w)] = rows * cols // 2 + (cols // spec.group_size) * rows * 2 * scale
    return sum(narrow.get(id(t), t.numel() * float_bytes(t)) for t in [*model.parameters(), *model.buffers()])


# ---- Save / load -------------------------------------------------------------------------------
def _runtime_keys(model: nn.Module) -> list[str]:
    """State entries that are run-time scratch (KV caches), never saved or expected."""
    return [k for k in model.state_dict() if ".kv_cache." in k or k.startswith("kv_cache.")]


def save_quantized(model: nn.Module, path: str | Path) -> Path:
    """Write the whole (quantized) model state as safetensors; the mode goes in the metadata."""
    from safetensors.torch import save_file
    path = Path(path)
    mode = quant_mode_of(model)
    skip = set(_runtime_keys(model))
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items() if k not in skip}
    meta = {"format": FORMAT, "version": FORMAT_VERSION, "quant": mode,
            "skipped": json.dumps(sorted(getattr(model, "quant_skipped", {})))}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=meta)
    return path


def read_quant_metadata(path: str | Path) -> dict[str, str] | None:
    """The metadata of an arnodes-quantized safetensors file; None for any other (or non-safetensors) file."""
    path = Path(path)
    if path.suffix.lower() != ".safetensors" or not path.is_file():
        return None
    from safetensors import SafetensorError, safe_open
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from e
    return meta if meta.get("format") == FORMAT else None


def load_quantized_into(model: nn.Module, path: str | Path, expected_mode: str | None = None) -> nn.Module:
    """Give a float model (meta-built is fine) the quantized weights saved by :func:`save_quantized`."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"quantized checkpoint not found: {path}")
    meta = read_quant_metadata(path)
    if meta is None:
        raise CheckpointError(f"{path}: not an arnodes quantized file (no '{FORMAT}' metadata); "
                              f"write one with save_quantized")
    if meta.get("version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: quantized format version {meta.get('version')!r}; this build reads "
                              f"{FORMAT_VERSION!r}")
    mode = meta.get("quant", "")
    if mode not in QUANT_MODES:
        raise CheckpointError(f"{path}: unknown quantization {mode!r} in metadata; known: {list(QUANT_MODES)}")
    if expected_mode is not None and mode != expected_mode:
        raise CheckpointError(f"{path}: file holds {mode!r} weights but {expected_mode!r} was requested")
    current = quant_mode_of(model)
    if current not in ("none", mode):
        raise CheckpointError(f"{path}: file holds {mode!r} weights but the model is already {current!r}")
    if current == "none":
        _convert(model, parse_quant(mode), from_weights=False)
    try:
        saved_skipped = json.loads(meta.get("skipped", "[]"))
    except ValueError as e:
        raise CheckpointError(f"{path}: corrupt 'skipped' metadata ({e})") from e
    if sorted(saved_skipped) != sorted(model.quant_skipped):
        raise CheckpointError(f"{path}: layers kept in float differ: file {sorted(saved_skipped)}, "
                              f"model {sorted(model.quant_skipped)}")
    try:
        sd = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: corrupt quantized file ({e})") from e
    optional = set(_runtime_keys(model))
    if hasattr(model, "optional_state_keys"):
        optional |= set(model.optional_state_keys())
    check_state_dict(model, sd, str(path), optional)
    own = model.state_dict()
    wrong = [f"{k}: file {sd[k].dtype} vs model {own[k].dtype}" for k in sd
             if not own[k].is_floating_point() and sd[k].dtype != own[k].dtype]
    if wrong:
        raise CheckpointError(f"{path}: wrong integer dtypes: {', '.join(wrong[:8])}")
    full = dict(sd)
    for k in optional:
        if k not in full and k in own:
            full[k] = own[k] if own[k].device.type != "meta" else torch.zeros(own[k].shape, dtype=own[k].dtype)
    model.load_state_dict(full, strict=True, assign=True)
    if hasattr(model, "post_load"):
        model.post_load()
    return model.requires_grad_(False)
