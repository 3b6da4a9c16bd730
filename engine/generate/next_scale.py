"""VAR's scale loop with constrained generation (DESIGN.md section 3).

At each scale the model predicts every token; positions the canvas marks as
known keep the canvas token, the others take the sampled one, and f_hat (the
next scale's input) accumulates the tokens actually used. With nothing known
this is plain class-conditional generation; with a mask it is the official
zero-shot inpaint / outpaint / class-conditional edit.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from ..conditioning import Conditioning
from ..errors import InvalidInputError
from ..guidance import VAR_SCHEDULES, cfg_mix_var
from ..models.var import VAR
from ..sampling import Randomness, SamplingParams, filter_logits, gumbel_softmax, sample_from_logits
from ..tokenizers.msvq import MSVQTokenizer
from .canvas import TokenCanvas
from .compiled import step_function, wants_compile

Progress = Callable[[int, int], None]


def class_labels(model: VAR, cond: Conditioning, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(cond labels, uncond labels) as tensors; the null class is ``num_classes``."""
    if cond.text is not None:
        raise InvalidInputError("VAR models are class-conditional: they take class ids, not a text prompt")
    n = model.num_classes
    ids = list(cond.class_ids) + list(cond.negative_class_ids or ())
    bad = [c for c in ids if not 0 <= int(c) <= n]
    if bad:
        raise InvalidInputError(f"class ids {bad} out of range: this model has classes 0..{n - 1} (and {n} = null)")
    labels = torch.tensor(cond.class_ids, dtype=torch.int64, device=device)
    neg = cond.negative_class_ids or (n,) * cond.batch
    return labels, torch.tensor(neg, dtype=torch.int64, device=device)


def style_labels(model: VAR, cond: Conditioning, device: torch.device, guided: bool) -> torch.Tensor | None:
    """Style ids for the (cond [+ uncond]) rows, or None ("any" everywhere). The unconditional branch
    uses the "any" style, so guidance pushes towards the asked style as well as the class."""
    if cond.style_ids is None:
        return None
    n = model.cfg.num_styles
    if n == 0:
        raise InvalidInputError("this model has no styles: use style 'any'")
    bad = [s for s in cond.style_ids if not 0 <= int(s) <= n]
    if bad:
        raise InvalidInputError(f"style ids {bad} out of range: this model has styles 0..{n - 1} (and {n} = any)")
    ids = list(cond.style_ids) + ([n] * cond.batch if guided else [])
    return torch.tensor(ids, dtype=torch.int64, device=device)


def scale_known_masks(keep_fine: torch.Tensor, patch_nums: tuple[int, ...]) -> list[torch.Tensor]:
    """Per-scale known-masks from a keep-mask on the finest grid (B, h, w), as the official zero-shot
    editing notebook derives them: bilinear resize, threshold 0.5, and scales of <= 3 tokens all kept."""
    masks = []
    for pn in patch_nums:
        if pn * pn <= 3:
            masks.append(torch.ones(keep_fine.shape[0], pn, pn, dtype=torch.bool, device=keep_fine.device))
            continue
        m = F.interpolate(keep_fine.float().unsqueeze(1), size=(pn, pn), mode="bilinear", align_corners=False)
        masks.append(m.squeeze(1) > 0.5)
    return masks


@torch.no_grad()
def generate_scales(model: VAR, tokenizer: MSVQTokenizer, cond: Conditioning, canvas: TokenCanvas,
                    params: SamplingParams, generator: Randomness,
                    progress: Progress | None = None, trace: dict | None = None,
                    compile: str | None = None) -> TokenCanvas:
    """Fill the canvas scale by scale. ``trace`` (optional) receives per-scale guided logits and
    sampled / used tokens; ``progress(step, total)`` may raise CancelledError between scales;
    ``compile``: "auto" | "on" | "off" for the per-scale step (None: the process default)."""
    cfg = model.cfg
    pns, S, B = cfg.patch_nums, len(cfg.patch_nums), cond.batch
    if canvas.batch != B:
        raise InvalidInputError(f"canvas has batch {canvas.batch} but the conditioning has {B} classes")
    if canvas.shapes != [(pn, pn) for pn in pns]:
        raise InvalidInputError(f"canvas grids {canvas.shapes} do not match the model's patch_nums {pns}")
    device = model.head.weight.device
    canvas = canvas.to(device)
    labels, uncond = class_labels(model, cond, device)
    guided = cond.cfg != 0.0  # t = 0 everywhere reduces to the conditional logits exactly
    all_labels = torch.cat((labels, uncond)) if guided else labels
    schedule = VAR_SCHEDULES[cond.schedule]
    model.setup_caches(all_labels.shape[0])
    emb = tokenizer.embedding_weight
    styles = style_labels(model, cond, device, guided)
    class_cond = model.conditioning(all_labels, styles)  # once per image: AdaLN depends on the class only
    control = cond.control.signal(model, B, guided) if cond.control is not None else None
    step, compiled = step_function(model, "scale_step", dynamic=True), wants_compile(compile, device)
    lvl_pos = model.level_pos()
    x = model.first_tokens(class_cond.class_BD, lvl_pos)
    f_hat = emb.new_zeros(B, cfg.cvae, pns[-1], pns[-1])
    used_grids: list[torch.Tensor] = []
    any_known = [bool(k.any()) for k in canvas.known]  # one check up front, none inside the loop
    start = 0
    for si, pn in enumerate(pns):
        logits = step(compiled, x, class_cond.block_mods, class_cond.head_mods, start, control)  # (NB, l, V)
        if guided:
            logits = cfg_mix_var(logits[:B], logits[B:], schedule(cond.cfg, si, S))
        filtered = filter_logits(logits, params)
        sampled = sample_from_logits(filtered, generator)  # (B, l)
        known = canvas.known[si].reshape(B, -1)
        used = torch.where(known, canvas.grids[si].reshape(B, -1), sampled) if any_known[si] else sampled
        h_emb = F.embedding(used, emb)  # (B, l, Cvae)
        if params.more_smooth:
            ratio = si / (S - 1) if S > 1 else 1.0
            soft = gumbel_softmax(filtered.mul(1 + ratio), max(0.27 * (1 - ratio * 0.95), 0.005), generator) @ emb
            h_emb = torch.where(known.unsqueeze(-1), h_emb, soft)
        if trace is not None:
            trace.setdefault("logits", []).append(logits)
            trace.setdefault("sampled", []).append(sampled)
            trace.setdefault("used", []).append(used)
        used_grids.append(used.view(B, pn, pn))
        f_hat, next_map = tokenizer.next_scale_input(si, f_hat, h_emb.transpose(1, 2).reshape(B, cfg.cvae, pn, pn))
        start += pn * pn
        if si < S - 1:
            nxt = pns[si + 1] ** 2
            x = model.word_embed(next_map.view(B, cfg.cvae, -1).transpose(1, 2).to(model.word_embed.weight.dtype))
            x = x + lvl_pos[:, start:start + nxt]
            if guided:
                x = x.repeat(2, 1, 1)
        if progress is not None:
            progress(si + 1, S)
    if device.type == "cpu":
        model.clear_caches()  # host memory is also the decoder's, which runs next; an accelerator keeps them for reuse
    return TokenCanvas(canvas.family, canvas.tokenizer_id, used_grids,
                       [torch.ones_like(g, dtype=torch.bool) for g in used_grids], decoder_input=f_hat)
