"""Stage 3 (optional): fine-tune only the tokenizer's decoder of an exported bundle.

The encoder, quant_conv and codebook stay frozen, so every image keeps exactly
the same tokens and the trained VAR stays valid; only ``post_quant_conv`` and
``decoder`` learn to turn f_hat back into sharper pixels (MSE + 0.1 L1).

    python -m arnodes.training.finetune_decoder --weights weights --steps 1500 --minutes 15
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from ..engine.loader import load_manifest
from . import data as emoji_data
from .common import Progress, StageClock, bf16_autocast_pays, ThreadTuner, cosine_lr, seed_everything
from .export import MANIFEST, _state
from .tokenizer_stage import autocast, to_model_images


def finetune_decoder(weights: Path, data_cache: Path, steps: int, minutes: float, batch: int, lr: float,
                     seed: int, threads: int = 2, record_as: str = "decoder_finetune") -> dict[str, float]:
    """Fine-tune and overwrite the bundle's tokenizer file; returns timing / last-PSNR info."""
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    info = json.loads((weights / MANIFEST).read_text(encoding="utf-8"))
    tok = load_manifest(weights / MANIFEST).tokenizer.float()
    d = emoji_data.load_for_manifest(data_cache, info, log=log)
    images = d.images[d.tokenizer_train()]
    gen = seed_everything(seed)
    tok.requires_grad_(False)
    params = list(tok.decoder.parameters()) + list(tok.post_quant_conv.parameters())
    for p in params:
        p.requires_grad_(True)
    tok.decoder.train()
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95))
    amp = bf16_autocast_pays(torch.device("cpu"))
    clock = StageClock(steps, 60 * minutes, 0.0)
    tuner = ThreadTuner(threads)
    bar = Progress(steps, "decoder")
    step = 0
    psnr = 0.0
    import time

    while not clock.done(step):
        t = time.time()
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, clock.progress(step), lr, 50)
        idx = torch.randint(0, len(images), (batch,), generator=gen).numpy()
        img = to_model_images(images[idx], torch.device("cpu"))
        with torch.no_grad():
            f_hat = tok.quantize.codes_to_fhat(tok.encode_scales(img))
        with autocast(img.device, amp):
            rec = tok.decoder(tok.post_quant_conv(f_hat))
        rec = rec.float()
        mse = F.mse_loss(rec, img)
        loss = mse + 0.1 * (rec - img).abs().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        psnr = float(10 * torch.log10(4.0 / mse.detach()))
        bar.update(1, psnr=psnr)
        tuner.record(time.time() - t)
    bar.close()
    tok.eval().requires_grad_(False)
    file = weights / info["tokenizer"]["file"]
    save_file(_state(tok, torch.float32), str(file), metadata={"format": "pt"})
    info.setdefault("training", {})[record_as] = {"steps": step, "seconds": round(clock.spent()), "batch": batch,
                                                  "lr": lr, "seed": seed, "images": int(len(images))}
    (weights / MANIFEST).write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return {"steps": step, "seconds": clock.spent(), "last_psnr": psnr}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="fine-tune the decoder of an exported emoji bundle")
    p.add_argument("--weights", required=True)
    p.add_argument("--data-cache", default=str(emoji_data.DEFAULT_CACHE))
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--minutes", type=float, default=15.0)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--record-as", default="decoder_finetune", help="manifest key the run is recorded under")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    print(json.dumps(finetune_decoder(Path(a.weights), Path(a.data_cache), a.steps, a.minutes, a.batch, a.lr,
                                      a.seed, a.threads, a.record_as)))


if __name__ == "__main__":
    main()
