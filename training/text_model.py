"""Train the bundled text-to-image model ``emoji-text``: a small T5 encoder and a LlamaGen t2i GPT,
trained together on captioned emoji drawings (``prompts.py``), offline.

    python -m arnodes.training.text_model --weights weights --out training/.cache/text

Why these parts. The generator is a raster LlamaGen t2i GPT (our ``models/llamagen.py``, the released
t2i layout: caption features -> ``cls_token_num`` prefix positions with a padding mask, a learned null
caption for classifier-free guidance), so the bundled model runs through exactly the code path of the
released LlamaGen-T2I checkpoints. It starts from the bundled ``emoji-raster`` GPT (same width, depth
and image tokens; only the prefix embedder is new) and uses its tokenizer file unchanged, so training
time goes to the text, not to relearning how to draw. The encoder is a two-layer T5 (``transformers``,
the architecture the released models use) over a word-level vocabulary of the emoji names, keywords
and style names, trained from scratch with the GPT: no download, and a prompt's words are whole
tokens. The 10 % of captions dropped for guidance are replaced by a learned null caption.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
import torch.nn.functional as F
from torch import nn

from ..engine.loader import load_manifest
from ..engine.models.llamagen import LlamaGen, LlamaGenConfig
from ..engine.text.captions import caption_condition
from . import data as emoji_data
from . import prompts
from .common import add_where_args, bf16_autocast_pays, load_checkpoint, pick_device, resume_state, rng_state, \
    run_settings, save_checkpoint, seed_everything, set_rng_state
from .generator_stage import train_teacher_forced, weighted_cross_entropy
from .export import MANIFEST as VAR_MANIFEST, write_draft_store
from .raster import LAYOUT as RASTER, init_gpt, training_grids
from .styles import V2_STYLES

NAME, MANIFEST = "emoji-text", "emoji_text.json"
GPT_FILE, ENCODER_FILE, TOKENIZER_FILE = "emoji_text_gpt.safetensors", "emoji_text_t5.safetensors", \
    "emoji_text_tokenizer.json"
DRAFT_STORE_FILE = "emoji_text_drafts.safetensors"
DEFAULTS = {"cfg": 1.0, "top_k": 50, "top_p": 0.9, "temperature": 1.0}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="train the bundled text-to-image model (emoji-text)")
    p.add_argument("--weights", default=str(Path(__file__).resolve().parent.parent / "weights"),
                   help="folder with the bundled emoji-raster model (its GPT is the start, its tokenizer is shared); "
                        "the export goes here")
    add_where_args(p, str(emoji_data.DEFAULT_CACHE / "text"), str(emoji_data.DEFAULT_CACHE))
    p.add_argument("--styles", default="all",
                   help="the emoji sets to train on: 'all' (data v3: seven sets) or comma-separated names")
    p.add_argument("--caption-tokens", type=int, default=16, help="caption positions (the encoder's max length)")
    p.add_argument("--text-dim", type=int, default=128)
    p.add_argument("--text-layers", type=int, default=2)
    p.add_argument("--text-heads", type=int, default=4)
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--minutes", type=float, default=40.0)
    p.add_argument("--cond-drop", type=float, default=0.1)
    p.add_argument("--ckpt-every", type=int, default=100)
    p.add_argument("--aux-weight", type=float, default=0.0,
                   help="weight of the auxiliary loss: the caption's class and named style predicted from the "
                        "encoder's pooled features (heads used in training only)")
    p.add_argument("--prefix-batch", type=int, default=0,
                   help="an extra batch of this many captions per step, teacher-forced on the first --prefix-tokens "
                        "image tokens only (0: none)")
    p.add_argument("--prefix-tokens", type=int, default=8,
                   help="the image tokens of the prefix batch (8 = the first row, where class and style show)")
    p.add_argument("--init", default=None, help="start the weights from a checkpoint (ckpt.pt of another --out) or "
                                                "an exported emoji_text.json; optimiser and schedule start afresh")
    return p.parse_args(argv)


def t5_config(a: argparse.Namespace, vocab_size: int) -> dict[str, Any]:
    """A small T5 encoder's config.json content (the keys ``transformers.T5Config`` takes)."""
    return {"vocab_size": vocab_size, "d_model": a.text_dim, "d_kv": a.text_dim // a.text_heads,
            "d_ff": 2 * a.text_dim, "num_layers": a.text_layers, "num_decoder_layers": a.text_layers,
            "num_heads": a.text_heads, "relative_attention_num_buckets": 16,
            "relative_attention_max_distance": 2 * a.caption_tokens, "dropout_rate": 0.0,
            "layer_norm_epsilon": 1e-6, "initializer_factor": 1.0, "feed_forward_proj": "gated-gelu",
            "is_encoder_decoder": False, "use_cache": False, "pad_token_id": 0, "eos_token_id": 1,
            "tie_word_embeddings": True, "model_type": "t5"}


class TextToImage(nn.Module):
    """The encoder, the GPT and the null caption, trained as one module; the class / style heads of the
    auxiliary loss are training-only (not exported)."""

    def __init__(self, encoder: nn.Module, gpt: LlamaGen, num_classes: int, num_styles: int) -> None:
        super().__init__()
        self.encoder, self.gpt = encoder, gpt
        c = gpt.config
        self.null_caption = nn.Parameter(torch.randn(c.cls_token_num, c.caption_dim) / c.caption_dim ** 0.5)
        self.class_head = nn.Linear(c.caption_dim, num_classes)
        self.style_head = nn.Linear(c.caption_dim, num_styles + 1)  # + "no style named"

    def forward(self, ids: torch.Tensor, mask: torch.Tensor, drop: torch.Tensor, tokens: torch.Tensor,
                targets: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Caption ids / mask (B, T) right-padded, drop (B,) bool, image tokens (B, L) -> (logits (B, L, V),
        auxiliary loss or None). ``targets``: (class ids (B,), style ids (B,), num_styles = none named)."""
        feats = self.encoder(input_ids=ids, attention_mask=mask)["last_hidden_state"]  # (B, T, C)
        aux = None
        if targets is not None and bool((~drop).any()):
            m = mask[..., None].to(feats.dtype)
            pooled = ((feats * m).sum(1) / m.sum(1).clamp_min(1))[~drop]  # (B', C)
            aux = (F.cross_entropy(self.class_head(pooled).float(), targets[0][~drop])
                   + F.cross_entropy(self.style_head(pooled).float(), targets[1][~drop]))
        cond, emb_mask = caption_condition(feats, mask)  # left padding, as the engine pads prompts
        cond = torch.where(drop[:, None, None], self.null_caption[None].to(cond.dtype), cond)
        return self.gpt(cond, tokens, emb_mask=emb_mask), aux

    def export_gpt_state(self) -> dict[str, torch.Tensor]:
        """The GPT's state dict with the learned null caption in its ``uncond_embedding`` rows."""
        sd = {k: v.detach().clone() for k, v in self.gpt.state_dict().items()}
        buf = sd["cls_embedding.uncond_embedding"]
        buf[: self.null_caption.shape[0]] = self.null_caption.detach().to(buf.dtype)
        return sd


def init_weights(model: TextToImage, path: Path, vocab: list[str], log) -> dict[str, Any]:
    """Load ``path`` into ``model``: a training checkpoint (ckpt.pt of another --out) or an exported bundle's
    manifest (emoji_text.json: its float16 GPT and encoder; the auxiliary heads start afresh, and words new
    to ``vocab`` (a new style's name) get fresh embedding rows). Returns the earlier training's steps and
    seconds, for the manifest."""
    if path.suffix == ".json":
        from safetensors.torch import load_file

        info = json.loads(path.read_text(encoding="utf-8"))
        if info.get("name") != NAME or "text_encoder" not in info:
            raise SystemExit(f"--init {path}: not weights of this model (a {info.get('name')!r} manifest, "
                             f"not {NAME!r})")
        gpt_sd = {k: v.float() for k, v in load_file(str(path.parent / info["generator"]["file"])).items()}
        sd = {f"gpt.{k}": v for k, v in gpt_sd.items()}
        old_vocab = json.loads((path.parent / info["text_encoder"]["tokenizer"]).read_text(encoding="utf-8"))
        enc_sd = regrow_vocab(load_file(str(path.parent / info["text_encoder"]["file"])),
                              sorted(old_vocab["model"]["vocab"], key=old_vocab["model"]["vocab"].get), vocab,
                              model.encoder.state_dict())
        sd.update({f"encoder.{k}": v for k, v in enc_sd.items()})
        sd["null_caption"] = gpt_sd["cls_embedding.uncond_embedding"][: model.null_caption.shape[0]]
        train = info.get("training", {})
        steps = (train.get("init_steps") or 0) + (train.get("steps") or 0)
        seconds = (train.get("init_seconds") or 0) + (train.get("train_seconds") or 0)
    else:
        start = load_checkpoint(path)
        if start is None:
            raise SystemExit(f"--init {path}: no checkpoint there")
        sd, steps, seconds = start["model"], start.get("t2i_step"), round(start.get("t2i_time", 0.0))
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if unexpected or any(not k.startswith(("class_head.", "style_head.")) for k in missing):
        raise SystemExit(f"--init {path}: not weights of this model (missing {missing}, unexpected {unexpected})")
    log(f"weights from {path} (step {steps})")
    return {"init_steps": steps, "init_seconds": seconds}


def regrow_vocab(enc_sd: dict[str, torch.Tensor], old: list[str], new: list[str],
                 fresh: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An encoder state dict over the word list ``old`` moved to ``new``: every word's embedding row follows
    the word; rows of new words come from ``fresh`` (the new encoder's own initialisation)."""
    if old == new:
        return enc_sd
    where = {w: i for i, w in enumerate(old)}
    to_rows = [j for j, w in enumerate(new) if w in where]
    from_rows = [where[new[j]] for j in to_rows]
    out = dict(enc_sd)
    for k, v in enc_sd.items():
        if v.dim() == 2 and v.shape[0] == len(old) and k in fresh and fresh[k].shape[0] == len(new):
            rows = fresh[k].clone().to(v.dtype)
            rows[to_rows] = v[from_rows]
            out[k] = rows
    return out


def warm_start(gpt: LlamaGen, raster_gpt: nn.Module) -> list[str]:
    """Copy every raster-GPT weight the t2i GPT shares (all but the prefix embedder); returns their names."""
    mine = gpt.state_dict()
    shared = {k: v.float() for k, v in raster_gpt.state_dict().items()
              if k in mine and not k.startswith("cls_embedding.") and mine[k].shape == v.shape}
    gpt.load_state_dict(shared, strict=False)
    return sorted(shared)


def run(a: argparse.Namespace) -> dict[str, Any]:
    from transformers import PreTrainedTokenizerFast, T5Config, T5EncoderModel

    from ..engine.text.t5 import T5_SPECIAL_TOKENS, T5TextEncoder

    torch.set_num_threads(a.threads)
    device = pick_device(a.device)
    amp = bf16_autocast_pays(device)
    weights, out = Path(a.weights), Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / "ckpt.pt"
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731

    raster = load_manifest(weights / RASTER.manifest)
    raster_info = json.loads((weights / RASTER.manifest).read_text(encoding="utf-8"))
    classes = json.loads((weights / raster_info["classes"]).read_text(encoding="utf-8"))
    var_manifest = weights / VAR_MANIFEST  # its class count (a tiny test bundle's few), with this run's styles
    var_info = json.loads(var_manifest.read_text(encoding="utf-8")) if var_manifest.is_file() else {}
    d = emoji_data.load_for_manifest(a.data_cache, {**var_info, "styles": emoji_data.parse_styles(a.styles)},
                                     log=log)
    by_emoji = {c["emoji"]: i for i, c in enumerate(classes)}
    remap = np.array([by_emoji.get(c["emoji"], -1) for c in d.classes])
    gen = seed_everything(a.seed)
    rng = np.random.default_rng(a.seed)

    vocab = prompts.vocabulary(classes)
    tok_json = prompts.tokenizer_json(vocab)
    (out / TOKENIZER_FILE).write_text(tok_json, encoding="utf-8")
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(out / TOKENIZER_FILE), **T5_SPECIAL_TOKENS)
    texts = T5TextEncoder(nn.Identity(), tokenizer, max_length=a.caption_tokens)  # tokenisation only
    t5_cfg = t5_config(a, len(vocab))
    encoder = T5EncoderModel(T5Config(**t5_cfg))
    rc = raster.generator.config
    gpt = LlamaGen(LlamaGenConfig(dim=rc.dim, n_layer=rc.n_layer, n_head=rc.n_head, vocab_size=rc.vocab_size,
                                  block_size=rc.block_size, model_type="t2i", cls_token_num=a.caption_tokens,
                                  caption_dim=a.text_dim, class_dropout_prob=a.cond_drop))
    init_gpt(gpt)
    copied = warm_start(gpt, raster.generator)
    model = TextToImage(encoder, gpt, len(classes), len(d.styles))
    earlier = init_weights(model, Path(a.init), vocab, log) if a.init else {}
    log(f"{len(vocab)} words; encoder {sum(p.numel() for p in encoder.parameters()) / 1e6:.2f}M params, GPT "
        f"{sum(p.numel() for p in gpt.parameters()) / 1e6:.2f}M ({len(copied)} tensors from {RASTER.name})")

    run_args = run_settings(a)
    state, resumed = resume_state(ckpt_path, run_args)
    if resumed:
        model.load_state_dict(state["model"])
        set_rng_state(state["rng"], gen)
        rng = np.random.default_rng(state["np_rng"])
        log(f"resuming from {ckpt_path}: step {state.get('t2i_step', 0)}")

    idx, tokens, labels = training_grids(raster.tokenizer, d, classes, device)
    styles = [d.styles[s] for s in d.style[idx]]
    heldout = prompts.heldout_prompts(classes, common_style_classes(d, remap))
    sampler = prompts.CaptionSampler(classes, heldout)

    def save() -> None:
        state["model"], state["rng"] = model.state_dict(), rng_state(gen)
        state["np_rng"] = int(rng.integers(2 ** 62))
        save_checkpoint(ckpt_path, state)

    style_ids = torch.from_numpy(d.style[idx].astype(np.int64))
    no_style = len(d.styles)

    def captioned(batch_idx: torch.Tensor, drop: torch.Tensor, length: int,
                  aux_weight: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(logits, targets, weighted auxiliary loss or None) of fresh captions for ``batch_idx``'s images,
        teacher-forced on their first ``length`` image tokens."""
        caps = [sampler.caption_and_style(int(labels[i]), styles[i], rng) for i in batch_idx.tolist()]
        ids, mask = texts.tokenize([c for c, _ in caps])
        named = torch.tensor([n for _, n in caps])
        targets = (labels[batch_idx].to(device),
                   torch.where(named, style_ids[batch_idx], no_style).to(device)) if aux_weight > 0 else None
        y = tokens[batch_idx, :length].to(device)
        logits, aux = model(ids.to(device), mask.to(device), drop.to(device), y, targets)
        return logits, y, None if aux is None else aux_weight * aux

    def forward(batch_idx: torch.Tensor, lab: torch.Tensor) -> tuple[torch.Tensor, ...]:
        logits, y, aux = captioned(batch_idx, lab == 1, tokens.shape[1], a.aux_weight)
        extra = [] if aux is None else [aux]
        if a.prefix_batch:  # many more captions per step, on the tokens they decide
            pidx = torch.randint(0, len(idx), (a.prefix_batch,), generator=gen)
            pdrop = torch.rand(a.prefix_batch, generator=gen) < a.cond_drop
            plogits, py, paux = captioned(pidx, pdrop, a.prefix_tokens, a.aux_weight)
            extra += [weighted_cross_entropy(plogits, py, None)]
            extra += [] if paux is None else [paux]
        return (logits, y, sum(extra)) if extra else (logits, y)

    if not state.get("t2i_done"):
        # labels here only mark dropped captions: 0 = caption, 1 = the null caption
        train_teacher_forced(model, torch.zeros(len(idx), dtype=torch.long), 1, forward, state, prefix="t2i",
                             steps=a.steps, batch=a.batch, lr=a.lr, cond_drop=a.cond_drop, budget_s=60 * a.minutes,
                             gen=gen, device=device, amp=amp, save=save, ckpt_every=a.ckpt_every, threads=a.threads)
    save()
    log(f"training time {state.get('t2i_time', 0):.0f}s ({state.get('t2i_step')} steps)")
    if not a.no_export:
        meta = {"train_seconds": round(state.get("t2i_time", 0.0)), "steps": state.get("t2i_step"),
                "images": int(len(idx)), "generator_from": RASTER.name, "tokenizer_from": RASTER.name,
                "heldout_prompts": len(heldout), "args": run_args, **earlier}
        store = write_draft_store(weights, DRAFT_STORE_FILE, tokens, None, model.gpt.config.vocab_size)
        export(weights, model.cpu(), t5_cfg, tok_json, raster_info, meta, d.styles, draft_store=store)
        log(f"exported {NAME} to {weights}")
    return state


def common_style_classes(d: emoji_data.EmojiData, remap: np.ndarray) -> list[int]:
    """Model classes drawn canonically in each of data v2's four styles: the held-out prompts' candidates.
    Fixed to those four, so that the held-out prompts stay the same when the data gains styles (earlier
    runs trained on every other class's captions)."""
    canon = d.kind == emoji_data.KIND_CANONICAL
    named = [i for i, name in enumerate(d.styles) if name in V2_STYLES] or list(range(len(d.styles)))
    have = [set(remap[d.labels[canon & (d.style == i)]].tolist()) for i in named]
    return sorted(set.intersection(*have) - {-1})


def export(weights: Path, model: TextToImage, t5_cfg: dict[str, Any], tok_json: str, raster_info: dict[str, Any],
           meta: dict[str, Any], styles: list[str], defaults: dict[str, Any] | None = None,
           draft_store: dict[str, Any] | None = None) -> Path:
    """The GPT (float16), the encoder (float32: T5 activations overflow float16), the tokenizer and the
    manifest; the image tokenizer is emoji-raster's file, named, not copied. ``draft_store``: the
    manifest entry of the grids written beside it (export.write_draft_store)."""
    import dataclasses

    gpt_sd = {k: v.to(torch.float16) if v.is_floating_point() else v for k, v in model.export_gpt_state().items()}
    save_file({k: v.contiguous() for k, v in gpt_sd.items()}, str(weights / GPT_FILE), metadata={"format": "pt"})
    enc_sd = {k: v.detach().float().contiguous().clone() for k, v in model.encoder.state_dict().items()}
    save_file(enc_sd, str(weights / ENCODER_FILE), metadata={"format": "pt"})
    (weights / TOKENIZER_FILE).write_text(tok_json, encoding="utf-8")
    manifest = {
        "name": NAME, "family": "llamagen", "image_size": raster_info["image_size"],
        "tokenizer": dict(raster_info["tokenizer"]),
        "generator": {"kind": "llamagen", "file": GPT_FILE, "config": dataclasses.asdict(model.gpt.config)},
        "text_encoder": {"kind": "t5", "file": ENCODER_FILE, "config": t5_cfg, "tokenizer": TOKENIZER_FILE,
                         "max_length": model.gpt.config.cls_token_num},
        "defaults": dict(defaults or DEFAULTS),
        "training": {**meta, "data_styles": list(styles)},  # the emoji sets trained on (not a model input)
    }
    if draft_store is not None:
        manifest["draft_store"] = draft_store
    path = weights / MANIFEST
    path.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> None:
    run(parse_args(argv))


if __name__ == "__main__":
    main()
