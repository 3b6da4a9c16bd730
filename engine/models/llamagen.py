"""LlamaGen GPT (class-to-image and text-to-image): a Llama-style raster next-token transformer with 2D RoPE.

Parameter names follow the official ``autoregressive/models/gpt.py`` so released
checkpoints load strictly. As there, one model serves both kinds and ``model_type`` picks
the prefix embedder: c2i puts one class token before the image tokens (``LabelEmbedder``),
t2i puts ``cls_token_num`` caption positions there, projected from text-encoder features
(``CaptionEmbedder``; the features come from :mod:`..text`). Everything after the prefix
(blocks, RoPE, cache, decode) is shared, so t2i is an embedder and a key mask, not a family.

Three entry points share the blocks:

- ``forward(cond, tokens)``: teacher-forced logits, no cache (parity, tests);
- ``prefill(cond, input_pos)`` / ``decode_step(tokens, input_pos)``: the cached
  path used by :mod:`..generate.next_token`. The caches are static buffers written in
  place (``setup_caches``), the attention always spans the whole padded cache under a
  boolean causal mask, so every decode step has identical shapes (CUDA-graph friendly).

Caption padding (t2i): a prompt shorter than the caption length leaves padded positions. Their keys
are hidden from every query, except that a padded position still sees itself (so no attention row is
empty), as the official ``generate()`` and training mask do. The cached path keeps that per-row key
mask in a static buffer (``key_mask``) written at prefill, so the decode steps keep their static shapes.

Conventions: B = batch (doubled for CFG by the caller), S = query length, T = cache
length, D = dim, H / Hkv = query / key-value heads, hd = head_dim, V = vocab.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..control.signal import ControlSignal, add_control
from ..errors import InvalidInputError, UnsupportedError
from ..kv_cache import KVCache, decode_cache_dtype, raster_cache_length
from ..layers import Linear, RMSNorm, attention, find_multiple

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LlamaGenConfig:
    """The official ``ModelArgs`` fields that shape inference (training-only fields are dropped)."""

    dim: int = 4096
    n_layer: int = 32
    n_head: int = 32
    n_kv_head: int | None = None
    multiple_of: int = 256
    ffn_dim_multiplier: float | None = None
    rope_base: float = 10000.0
    norm_eps: float = 1e-5
    num_classes: int = 1000
    class_dropout_prob: float = 0.1
    vocab_size: int = 16384
    cls_token_num: int = 1
    block_size: int = 256
    model_type: str = "c2i"
    caption_dim: int = 2048  # t2i: width of the text-encoder features (flan-t5-xl: 2048)

    def __post_init__(self) -> None:
        if self.model_type not in MODEL_TYPES:
            raise UnsupportedError(f"LlamaGen model_type {self.model_type!r} is not supported; "
                                   f"expected one of {MODEL_TYPES}")
        if self.model_type == "c2i" and self.cls_token_num != 1:
            raise UnsupportedError(f"c2i LlamaGen uses one class token; cls_token_num={self.cls_token_num}")
        if self.cls_token_num < 1 or self.caption_dim < 1:
            raise InvalidInputError(f"cls_token_num ({self.cls_token_num}) and caption_dim ({self.caption_dim}) "
                                    f"must be >= 1")
        if self.dim % self.n_head or self.n_head % self.kv_heads:
            raise InvalidInputError(f"dim {self.dim} must divide into n_head {self.n_head} heads, and n_head "
                                    f"into n_kv_head {self.kv_heads} groups")
        if self.head_dim % 4:
            raise InvalidInputError(f"2D RoPE needs head_dim divisible by 4, got {self.head_dim}")
        if math.isqrt(self.block_size) ** 2 != self.block_size:
            raise InvalidInputError(f"block_size {self.block_size} must be a square (g*g tokens)")

    @property
    def is_t2i(self) -> bool:
        return self.model_type == "t2i"

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_head

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head if self.n_kv_head is not None else self.n_head

    @property
    def grid_size(self) -> int:
        return math.isqrt(self.block_size)

    @property
    def ffn_hidden(self) -> int:
        hidden = int(2 * (4 * self.dim) / 3)
        if self.ffn_dim_multiplier is not None:
            hidden = int(self.ffn_dim_multiplier * hidden)
        return find_multiple(hidden, self.multiple_of)

    @property
    def class_rows(self) -> int:
        """The class table has an extra null row (index ``num_classes``) when trained with label dropout."""
        return self.num_classes + int(self.class_dropout_prob > 0)

    @classmethod
    def from_official(cls, model_args: dict[str, Any]) -> "LlamaGenConfig":
        """From the official ``ModelArgs`` dict; the training-only fields (dropouts, init, sizes) are ignored."""
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in model_args.items() if k in names})


MODEL_TYPES = ("c2i", "t2i")
NULL_CAPTION_TOKENS = 120  # the official CaptionEmbedder's learned null caption always has 120 rows


def _preset(dim: int, n_layer: int, n_head: int, **kw) -> LlamaGenConfig:
    return LlamaGenConfig(dim=dim, n_layer=n_layer, n_head=n_head, num_classes=1000, vocab_size=16384,
                          block_size=256, **kw)


_T2I = dict(model_type="t2i", cls_token_num=120, caption_dim=2048)  # sample_t2i.py defaults (flan-t5-xl)
PRESETS: dict[str, LlamaGenConfig] = {
    "GPT-B": _preset(768, 12, 12),
    "GPT-L": _preset(1024, 24, 16),
    "GPT-XL": _preset(1280, 36, 20),
    "GPT-XXL": _preset(1536, 48, 24),
    "GPT-3B": _preset(3200, 24, 32),
    "GPT-XL-t2i": _preset(1280, 36, 20, **_T2I),  # the released t2i_XL_stage1_256 / stage2_512 (block_size per size)
}


# ---- 2D rotary position embedding -------------------------------------------------------------
def rope_2d_table(grid: int, head_dim: int, base: float, prefix_rows: int) -> torch.Tensor:
    """(prefix + g*g, hd/2, 2) [cos, sin] table; row r*g+c rotates by (r*freqs, c*freqs).

    The first hd/4 pairs carry the row angle, the rest the column angle. The class-token
    rows are all zero (not the identity), as in the reference: those q/k vectors vanish.
    """
    half = head_dim // 2
    freqs = 1.0 / (base ** (torch.arange(0, half, 2, dtype=torch.float32)[: half // 2] / half))  # (hd/4,)
    pos = torch.arange(grid, dtype=torch.float32)
    ang = torch.outer(pos, freqs)  # (g, hd/4)
    ang_grid = torch.cat([ang[:, None, :].expand(grid, grid, -1), ang[None, :, :].expand(grid, grid, -1)], dim=-1)
    table = torch.stack([ang_grid.cos(), ang_grid.sin()], dim=-1).reshape(grid * grid, half, 2)  # (L, hd/2, 2)
    return torch.cat([torch.zeros(prefix_rows, half, 2), table], dim=0)  # (prefix + L, hd/2, 2)


def apply_rope(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs (x[2j], x[2j+1]) in float32. x (B, S, H, hd), table (S, hd/2, 2).

    Pairs are complex numbers and the table is cos + i sin, so the rotation
    ``(x0 cos - x1 sin, x1 cos + x0 sin)`` is a single complex multiply (few eager ops). A compiled step
    spells it out in real arithmetic instead, which the compiler fuses (it generates no complex code).
    """
    B, S, H, hd = x.shape
    if torch.compiler.is_compiling():
        x2 = x.float().reshape(B, S, H, hd // 2, 2)
        cos, sin = table[:, None, :, 0], table[:, None, :, 1]  # (S, 1, hd/2)
        out = torch.stack([x2[..., 0] * cos - x2[..., 1] * sin, x2[..., 1] * cos + x2[..., 0] * sin], dim=-1)
        return out.reshape(B, S, H, hd).type_as(x)
    pairs = torch.view_as_complex(x.float().reshape(B, S, H, hd // 2, 2))  # (B, S, H, hd/2) complex
    rot = torch.view_as_complex(table).unsqueeze(1)  # (S, 1, hd/2) complex
    return torch.view_as_real(pairs * rot).reshape(B, S, H, hd).type_as(x)


# ---- blocks -----------------------------------------------------------------------------------
class LabelEmbedder(nn.Module):
    """Class id -> one embedding token; the null (unconditional) class is row ``num_classes``."""

    def __init__(self, rows: int, dim: int) -> None:
        super().__init__()
        self.embedding_table = nn.Embedding(rows, dim)

    @staticmethod
    def input_shape(batch: int) -> tuple[int, ...]:
        return (batch,)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        return self.embedding_table(labels).unsqueeze(1)  # (B, 1, D)


class CaptionMLP(nn.Module):
    """fc2(gelu_tanh(fc1 x)), no biases: text features (C) -> model width (D)."""

    def __init__(self, in_dim: int, dim: int) -> None:
        super().__init__()
        self.fc1 = Linear(in_dim, dim, bias=False)
        self.fc2 = Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class CaptionEmbedder(nn.Module):
    """Caption features (B, T, C) -> T prefix tokens (B, T, D). ``uncond_embedding`` (a persistent
    buffer, learned in training and saved in the checkpoint) is the null caption of classifier-free
    guidance; it is projected like any caption and never masked."""

    def __init__(self, caption_dim: int, dim: int, tokens: int) -> None:
        super().__init__()
        self.tokens = tokens
        self.cap_proj = CaptionMLP(caption_dim, dim)
        # in place: out-of-place arithmetic on the meta device (build_on_meta) runs torch's Python reference kernels
        self.register_buffer("uncond_embedding", torch.randn(NULL_CAPTION_TOKENS, caption_dim).mul_(caption_dim ** -0.5))

    def input_shape(self, batch: int) -> tuple[int, ...]:
        return (batch, self.tokens, self.uncond_embedding.shape[1])

    def null_caption(self) -> torch.Tensor:
        """The learned null caption over the model's caption positions (T, C)."""
        if self.tokens > self.uncond_embedding.shape[0]:
            raise InvalidInputError(f"classifier-free guidance needs the null caption, which has "
                                    f"{self.uncond_embedding.shape[0]} rows; this model has {self.tokens} caption "
                                    f"positions: use cfg <= 1 or give a negative prompt")
        return self.uncond_embedding[: self.tokens]

    def forward(self, captions: torch.Tensor) -> torch.Tensor:
        return self.cap_proj(captions.to(self.cap_proj.fc1.weight.dtype))  # (B, T, D)


def prefix_key_mask(causal_rows: torch.Tensor, key_keep: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
    """The attention mask under caption padding: (B, 1, S, T) bool.

    causal_rows (S, T): the causal mask rows of the queries at ``input_pos`` (S,); key_keep (B, T): False
    for padded caption keys. A padded key is hidden unless it is the query itself (the diagonal stays).
    """
    diag = torch.arange(causal_rows.shape[1], device=input_pos.device) == input_pos[:, None]  # (S, T)
    return (causal_rows & (key_keep[:, None, :] | diag)).unsqueeze(1)  # (B, 1, S, T)


def caption_key_keep(emb_mask: torch.Tensor, length: int) -> torch.Tensor:
    """Caption mask (B, P) (0 = padded) -> keys to keep (B, length) bool; every position past P is kept."""
    keep = torch.ones(emb_mask.shape[0], length, dtype=torch.bool, device=emb_mask.device)
    keep[:, : emb_mask.shape[1]] = emb_mask.bool()
    return keep


def caption_attention_mask(emb_mask: torch.Tensor, length: int) -> torch.Tensor:
    """The teacher-forced mask over a whole sequence of ``length`` positions with a padded caption prefix
    (B, 1, length, length) bool: causal, padded caption keys hidden, the diagonal always kept (the
    official training mask)."""
    causal = torch.ones(length, length, dtype=torch.bool, device=emb_mask.device).tril_()  # (N, N)
    pos = torch.arange(length, device=emb_mask.device)
    return prefix_key_mask(causal, caption_key_keep(emb_mask, length), pos)


class Attention(nn.Module):
    def __init__(self, cfg: LlamaGenConfig) -> None:
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = cfg.n_head, cfg.kv_heads, cfg.head_dim
        self.q_dim, self.kv_dim = cfg.dim, cfg.kv_heads * cfg.head_dim
        self.wqkv = Linear(cfg.dim, self.q_dim + 2 * self.kv_dim, bias=False)  # rows [q; k; v]
        self.wo = Linear(cfg.dim, cfg.dim, bias=False)
        self.kv_cache: KVCache | None = None

    def forward(self, x: torch.Tensor, rope: torch.Tensor, input_pos: torch.Tensor | None,
                mask: torch.Tensor | None, kv_len: int | None = None) -> torch.Tensor:
        """x (B, S, D); with ``input_pos`` the keys/values go through the static cache, of which the
        first ``kv_len`` positions are attended (None: all of it, the static shape a CUDA graph needs)."""
        B, S, _ = x.shape
        qkv = self.wqkv(x)  # (B, S, (H + 2 Hkv) * hd)
        heads = self.n_head + self.n_kv_head
        qk = apply_rope(qkv[..., : self.q_dim + self.kv_dim].view(B, S, heads, self.head_dim), rope)  # q, k rotated
        q = qk[:, :, : self.n_head].transpose(1, 2)  # (B, H, S, hd)
        k = qk[:, :, self.n_head:].transpose(1, 2)  # (B, Hkv, S, hd)
        v = qkv[..., self.q_dim + self.kv_dim:].view(B, S, self.n_kv_head, self.head_dim).transpose(1, 2)
        if input_pos is not None:
            assert self.kv_cache is not None, "setup_caches() must run before cached attention"
            k, v = self.kv_cache.update(input_pos, k, v)  # the whole static buffers (B, Hkv, T, hd)
            if kv_len is not None:
                k, v = k[:, :, :kv_len], v[:, :, :kv_len]  # (B, Hkv, kv_len, hd)
        y = attention(q, k, v, mask, is_causal=mask is None,
                      enable_gqa=self.n_kv_head != self.n_head)  # (B, H, S, hd)
        return self.wo(y.transpose(1, 2).reshape(B, S, self.q_dim))


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x)."""

    def __init__(self, cfg: LlamaGenConfig) -> None:
        super().__init__()
        self.w1 = Linear(cfg.dim, cfg.ffn_hidden, bias=False)
        self.w3 = Linear(cfg.dim, cfg.ffn_hidden, bias=False)
        self.w2 = Linear(cfg.ffn_hidden, cfg.dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class TransformerBlock(nn.Module):
    def __init__(self, cfg: LlamaGenConfig) -> None:
        super().__init__()
        self.attention = Attention(cfg)
        self.feed_forward = FeedForward(cfg)
        self.attention_norm = RMSNorm(cfg.dim, eps=cfg.norm_eps)
        self.ffn_norm = RMSNorm(cfg.dim, eps=cfg.norm_eps)

    def forward(self, x: torch.Tensor, rope: torch.Tensor, input_pos: torch.Tensor | None,
                mask: torch.Tensor | None, kv_len: int | None = None) -> torch.Tensor:
        h = x + self.attention(self.attention_norm(x), rope, input_pos, mask, kv_len)
        return h + self.feed_forward(self.ffn_norm(h))


class LlamaGen(nn.Module):
    """Sequence = [class token | caption tokens] + token embeddings; token t sits at position ``cls_token_num + t``."""

    def __init__(self, config: LlamaGenConfig) -> None:
        super().__init__()
        self.config = config
        self.cls_embedding: LabelEmbedder | CaptionEmbedder = (
            CaptionEmbedder(config.caption_dim, config.dim, config.cls_token_num) if config.is_t2i
            else LabelEmbedder(config.class_rows, config.dim))
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.dim)
        self.layers = nn.ModuleList(TransformerBlock(config) for _ in range(config.n_layer))
        self.norm = RMSNorm(config.dim, eps=config.norm_eps)
        self.output = Linear(config.dim, config.vocab_size, bias=False)
        # float32 RoPE table kept outside the state_dict and out of .to(dtype): a plain attribute
        self.freqs_cis = self._rope_table()
        self.causal_mask: torch.Tensor | None = None  # (T, T) bool, made by setup_caches
        self.key_mask: torch.Tensor | None = None  # t2i: (max B, T) bool, False = padded caption key; per prefill
        self.max_batch_size, self.max_seq_length = 0, 0

    # ---- loading ------------------------------------------------------------------------------
    @classmethod
    def remap_state_dict(cls, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Drop what the reference sometimes saves but recomputes (``freqs_cis``, KV-cache buffers), and a
        ControlAR checkpoint's control branch, which loads separately as its adapter (control/controlar.py)."""
        from ..control.controlar import CONTROL_PREFIXES
        return {k: v for k, v in sd.items()
                if k != "freqs_cis" and ".kv_cache." not in k and k not in ("causal_mask",)
                and not k.startswith(CONTROL_PREFIXES)}

    def post_load(self) -> None:
        """Recompute the RoPE table (a meta-device build leaves it empty)."""
        self.freqs_cis = self._rope_table()

    def _rope_table(self) -> torch.Tensor:
        c = self.config
        device = self.norm.weight.device
        if device.type == "meta":
            device = torch.device("cpu")
        with torch.device(device):
            return rope_2d_table(c.grid_size, c.head_dim, c.rope_base, c.cls_token_num)

    def _rope_on(self, device: torch.device) -> torch.Tensor:
        if self.freqs_cis.device != device:
            self.freqs_cis = self.freqs_cis.to(device)
        return self.freqs_cis

    @property
    def grid_size(self) -> int:
        return self.config.grid_size

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    def check_labels(self, labels: torch.Tensor, allow_null: bool = False) -> None:
        """Class ids must index the class table (the null row only where allowed)."""
        hi = self.config.class_rows if allow_null else self.config.num_classes
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= hi):
            kind = "class ids (incl. the null class)" if allow_null else "class ids"
            raise InvalidInputError(f"{kind} must be in [0, {hi}); got {labels.tolist()}")

    # ---- teacher-forced forward (no cache) --------------------------------------------------
    def forward(self, cond: torch.Tensor, tokens: torch.Tensor, control: ControlSignal | None = None,
                emb_mask: torch.Tensor | None = None, all_positions: bool = False) -> torch.Tensor:
        """cond: class ids (B,) (c2i) or caption features (B, cls, C) (t2i); tokens (B, S) with S <= L ->
        logits (B, S, V) float32, [:, t] predicts token t. ``emb_mask`` (B, cls), t2i: 0 at padded caption
        positions (None: nothing hidden, plain causal). ``all_positions``: the logits of the whole sequence
        (B, cls + S - 1, V) instead, prefix positions included (the reference's training output).
        ``control``: condition tokens per sequence position (ControlAR), added before the adapter's blocks."""
        B, S = tokens.shape
        want = self.cls_embedding.input_shape(B)
        if tuple(cond.shape) != want or not 1 <= S <= self.config.block_size:
            raise InvalidInputError(f"forward: condition {tuple(cond.shape)} / tokens {tuple(tokens.shape)}: need "
                                    f"a condition {want} and tokens (B, S) with 1 <= S <= {self.config.block_size}")
        cls = self.config.cls_token_num
        h = torch.cat([self.cls_embedding(cond), self.tok_embeddings(tokens[:, :-1])], dim=1)  # (B, N = cls+S-1, D)
        N = h.shape[1]
        mask = None
        if emb_mask is not None:
            self._check_emb_mask(emb_mask, B)
            mask = caption_attention_mask(emb_mask.to(h.device), N)  # (B, 1, N, N)
        rope = self._rope_on(h.device)[:N]  # (N, hd/2, 2)
        for i, layer in enumerate(self.layers):
            h = layer(add_control(control, i, h, slice(0, N)), rope, None, mask)
        logits = self.output(self.norm(h)).float()  # (B, N, V)
        return logits if all_positions else logits[:, cls - 1:]  # (B, S, V)

    def _check_emb_mask(self, emb_mask: torch.Tensor, batch: int) -> None:
        cls = self.config.cls_token_num
        if not self.config.is_t2i or tuple(emb_mask.shape) != (batch, cls):
            raise InvalidInputError(f"emb_mask {tuple(emb_mask.shape)}: a caption mask (B={batch}, {cls}) belongs to a "
                                    f"text-to-image model (this one is {self.config.model_type})")

    # ---- cached inference ---------------------------------------------------------------------
    def clear_caches(self) -> None:
        """Drop the KV caches: scratch that the next generation sets up again (at batch 16 they can
        outweigh the model, so an evicted model does not carry them to CPU memory)."""
        for layer in self.layers:
            layer.attention.kv_cache = None

    def setup_caches(self, max_batch_size: int, max_seq_length: int, dtype: torch.dtype | None = None) -> None:
        """Allocate the static KV caches; a no-op when the existing ones are big enough."""
        device = self.norm.weight.device
        # the norm's weight: a float parameter (output / embeddings may be quantized)
        dtype = dtype or decode_cache_dtype(self.norm.weight.dtype, device)
        T = raster_cache_length(max_seq_length)
        cache = self.layers[0].attention.kv_cache
        if cache is not None and cache.holds(max_batch_size, T, dtype, device):
            return
        c = self.config
        for layer in self.layers:
            layer.attention.kv_cache = KVCache(max_batch_size, c.kv_heads, T, c.head_dim, dtype, device)
        self.causal_mask = torch.ones(T, T, dtype=torch.bool, device=device).tril_()  # (T, T)
        if c.is_t2i:
            self.key_mask = torch.ones(max_batch_size, T, dtype=torch.bool, device=device)  # (max B, T)
        self.max_batch_size, self.max_seq_length = max_batch_size, T
        self._rope_on(device)
        logger.debug("LlamaGen KV cache: batch %d, length %d, %s", max_batch_size, T, dtype)

    def _run_cached(self, h: torch.Tensor, input_pos: torch.Tensor, kv_len: int | None,
                    last_only: bool = True, control: ControlSignal | None = None) -> torch.Tensor:
        """h (B, S, D) at positions input_pos (S,) -> logits of the last position (B, V) float32, or of every
        position (B, S, V) without ``last_only``. ``kv_len``: attend only the first kv_len cache positions
        (eager decoding; None = the whole cache)."""
        assert self.causal_mask is not None, "setup_caches() must run before prefill/decode_step"
        if self.key_mask is None:
            mask = self.causal_mask[input_pos][None, None]  # (1, 1, S, T)
        else:  # t2i: padded caption keys hidden, per row
            mask = prefix_key_mask(self.causal_mask[input_pos], self.key_mask[: h.shape[0]], input_pos)  # (B,1,S,T)
        if kv_len is not None:
            mask = mask[..., :kv_len]  # (1, 1, S, kv_len)
        rope = self.freqs_cis[input_pos]  # (S, hd/2, 2)
        for i, layer in enumerate(self.layers):
            h = layer(add_control(control, i, h, input_pos), rope, input_pos, mask, kv_len)
        return self.output(self.norm(h[:, -1] if last_only else h)).float()  # (B, V) or (B, S, V)

    def prefill(self, cond: torch.Tensor, input_pos: torch.Tensor, kv_len: int | None = None,
                control: ControlSignal | None = None, emb_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The prefix at positions [0, cls) -> logits (B, V) for token 0. cond: class ids (B,) (c2i) or
        caption features (B, cls, C) (t2i), with ``emb_mask`` (B, cls) marking the real caption positions
        (None: all real); the mask is kept for the decode steps until the next prefill."""
        h = self.cls_embedding(cond)  # (B, cls, D)
        if self.key_mask is not None:
            B = h.shape[0]
            if emb_mask is None:
                self.key_mask[:B].fill_(True)
            else:
                self._check_emb_mask(emb_mask, B)
                self.key_mask[:B].copy_(caption_key_keep(emb_mask, self.key_mask.shape[1]))
        elif emb_mask is not None:
            raise InvalidInputError("emb_mask: a class-conditional model has no caption positions to mask")
        return self._run_cached(h, input_pos, kv_len, control=control)

    def decode_step(self, tokens: torch.Tensor, input_pos: torch.Tensor, kv_len: int | None = None,
                    control: ControlSignal | None = None) -> torch.Tensor:
        """tokens (B, 1) at position input_pos (1,) -> logits (B, V) for the next token."""
        return self._run_cached(self.tok_embeddings(tokens), input_pos, kv_len, control=control)

    def decode_window(self, tokens: torch.Tensor, input_pos: torch.Tensor, kv_len: int | None = None,
                      control: ControlSignal | None = None) -> torch.Tensor:
        """tokens (B, S) at consecutive positions input_pos (S,) -> logits (B, S, V): position i predicts the
        token after tokens[:, i]. One forward verifies a window of drafts (speculative decoding); cache
        entries past the accepted ones are simply overwritten by the next window."""
        return self._run_cached(self.tok_embeddings(tokens), input_pos, kv_len, last_only=False, control=control)
