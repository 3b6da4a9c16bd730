"""Make a LlamaGen text-to-image parity case with the OFFICIAL code (FoundationVision/LlamaGen), in the
layout of tests/fixtures/reference/llamagen_t2i/tiny_a (README.llamagen_t2i.md in the shared fixtures):
the same tensor names and checks, another configuration, so the parity tests run it unchanged.

The official sources are imported from ``--peer-src`` (a checkout outside this repository, never
committed): ``autoregressive/models/gpt.py`` (``ModelArgs``, ``Transformer``) and
``autoregressive/models/generate.py`` (``generate``, ``sample``). Two pieces of official logic are
inline code in scripts, not functions, so they are restated here from their description: the caption
left padding of ``sample_t2i.py`` (per row, the padded rows move to the front, the mask is flipped) and
the training attention mask of ``dataset/t2i.py`` (causal, padded caption keys hidden, the diagonal
kept; cropped ``[:-1, :-1]`` as the training script feeds it). CPU, float32, one thread.

    git --git-dir <LlamaGen mirror> archive HEAD | tar -x -C /tmp/LlamaGen
    python tools/llamagen_t2i_fixture.py --peer-src /tmp/LlamaGen --peer-commit ce98ec41803a74a90ce68c40ababa9eaeffeb4ec \
        --out tests/fixtures/reference/llamagen_t2i/tiny_b --seed 3
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

CONFIG_B = {
    "gpt": dict(dim=96, n_layer=3, n_head=4, multiple_of=64, vocab_size=128, block_size=25, cls_token_num=120,
                caption_dim=24, rope_base=5000.0, model_type="t2i", class_dropout_prob=0.1),
    "valid_lens": [7, 61, 120],  # one caption fills every position: nothing padded
    "cfg_scale": 2.5,
    "sample": dict(temperature=1.1, top_k=40, top_p=0.85),
    "t5": dict(vocab_size=80, d_model=24, d_kv=6, d_ff=40, num_layers=3, num_decoder_layers=3, num_heads=4,
               relative_attention_num_buckets=16, relative_attention_max_distance=32, dropout_rate=0.0,
               layer_norm_epsilon=1e-6, initializer_factor=1.0, feed_forward_proj="relu", is_encoder_decoder=False,
               use_cache=False, pad_token_id=0, eos_token_id=1),
}


def _import_official(peer: Path):
    sys.path.insert(0, str(peer))
    from autoregressive.models import generate as official_generate
    from autoregressive.models import gpt as official_gpt
    return official_gpt, official_generate


def _seeded_overwrite(model: torch.nn.Module, gen: torch.Generator) -> None:
    """Weights large enough that every part matters (the official init zeroes the output layer):
    Linear ~ N(0, 1/in) (output N(0, 4/in)), Embedding ~ N(0, 1), RMSNorm ~ 1 + 0.1 N."""
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear):
                scale = 2.0 if name == "output" else 1.0
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen) * scale / module.in_features ** 0.5)
            elif isinstance(module, torch.nn.Embedding):
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen))
            elif type(module).__name__ == "RMSNorm":
                module.weight.copy_(1 + 0.1 * torch.randn(module.weight.shape, generator=gen))


def left_pad(emb: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """sample_t2i.py's default: per row with n real tokens, rows [n:] then [:n]; the mask flipped; x mask."""
    new_mask = torch.flip(mask, dims=[-1])
    rows = [torch.cat([e[int(m.sum()):], e[:int(m.sum())]]) for e, m in zip(emb, mask)]
    return torch.stack(rows) * new_mask[:, :, None], new_mask


def training_mask(emb_mask: torch.Tensor, seq_len: int) -> torch.Tensor:
    """dataset/t2i.py's mask for a left-padded caption (B, T) over seq_len positions, as train_t2i.py crops it."""
    T = emb_mask.shape[1]
    out = []
    for m in emb_mask:
        a = torch.tril(torch.ones(seq_len, seq_len))
        a[:, :T] = a[:, :T] * m.float().unsqueeze(0)
        eye = torch.eye(seq_len, seq_len)
        out.append((a * (1 - eye) + eye).to(torch.bool))
    return torch.stack(out).unsqueeze(1)[:, :, :-1, :-1]


def run_generate(gpt, official_generate, cond, mask, L: int, cfg: float, settings: dict, seed: int):
    """The official generate() with the output layer's last-position logits captured per step."""
    raw: list[torch.Tensor] = []
    hook = gpt.output.register_forward_hook(lambda _m, _i, out: raw.append(out[:, -1, :].float().clone()))
    try:
        torch.manual_seed(seed)
        tokens = official_generate.generate(gpt, cond, L, mask, cfg_scale=cfg, cfg_interval=-1, sample_logits=True,
                                            **settings)
    finally:
        hook.remove()
    return tokens[:, -L:] if tokens.shape[1] > L else tokens, torch.stack(raw)  # (B, L), (L, NB, V)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--peer-src", required=True, help="a checkout of FoundationVision/LlamaGen (not committed)")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=3)
    p.add_argument("--peer-commit", default="", help="the checkout's commit, when --peer-src is not a git work tree")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    peer, out = Path(a.peer_src), Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    official_gpt, official_generate = _import_official(peer)
    from transformers import T5Config, T5EncoderModel
    import transformers

    cfg = CONFIG_B
    torch.manual_seed(a.seed + 7)
    args = official_gpt.ModelArgs(**cfg["gpt"])
    gpt = official_gpt.Transformer(args)
    gen = torch.Generator().manual_seed(a.seed)
    _seeded_overwrite(gpt, gen)
    gpt.eval()
    T, L, C, V = args.cls_token_num, args.block_size, args.caption_dim, args.vocab_size
    B = len(cfg["valid_lens"])
    t: dict[str, torch.Tensor] = {}

    # captions: random T5 stand-in features, non-zero at padded positions; right-padded tokenizer mask
    t["t5_last_hidden_state"] = torch.randn(B, T, C, generator=gen)
    t["t5_attention_mask"] = (torch.arange(T)[None] < torch.tensor(cfg["valid_lens"])[:, None]).long()
    t["cond_left"], t["emb_mask_left"] = left_pad(t["t5_last_hidden_state"], t["t5_attention_mask"])
    t["cond_right"] = t["t5_last_hidden_state"] * t["t5_attention_mask"][:, :, None]
    t["emb_mask_right"] = t["t5_attention_mask"].clone()
    with torch.no_grad():
        t["cap_proj_left"] = gpt.cls_embedding(t["cond_left"], train=False)
        t["cap_proj_uncond"] = gpt.cls_embedding(gpt.cls_embedding.uncond_embedding[None], train=False)
        # teacher forcing, before any generate() sets up the KV caches
        t["tf_tokens"] = torch.randint(V, (B, L), generator=gen)
        N = T + L - 1
        t["tf_attn_mask"] = training_mask(t["emb_mask_left"], T + L).long()
        pos = torch.arange(N)
        t["tf_logits_full"] = gpt(idx=t["tf_tokens"][:, :-1], cond_idx=t["cond_left"], input_pos=pos,
                                  mask=t["tf_attn_mask"].bool())[0]
        t["tf_logits_causal_image"] = gpt(idx=t["tf_tokens"][:, :-1], cond_idx=t["cond_left"], input_pos=pos,
                                          mask=None)[0][:, T - 1:]
        rng_seed = a.seed + 11
        greedy = dict(temperature=1.0, top_k=1, top_p=1.0)
        checks: dict = {}
        for prefix, side, scale in (("gen_left_cfg1", "left", 1.0), ("gen_left_cfg", "left", cfg["cfg_scale"]),
                                    ("gen_right_cfg", "right", cfg["cfg_scale"])):
            tokens, raw = run_generate(gpt, official_generate, t[f"cond_{side}"], t[f"emb_mask_{side}"], L, scale,
                                       greedy, rng_seed)
            t[f"{prefix}_tokens"], t[f"{prefix}_raw_logits"] = tokens.long(), raw
            checks[prefix] = {"cfg_scale": scale, **greedy, "rng_seed": rng_seed}
        tokens, raw = run_generate(gpt, official_generate, t["cond_left"], t["emb_mask_left"], L, cfg["cfg_scale"],
                                   cfg["sample"], rng_seed)
        again, _ = run_generate(gpt, official_generate, t["cond_left"], t["emb_mask_left"], L, cfg["cfg_scale"],
                                cfg["sample"], rng_seed)
        t["gen_left_sample_tokens"], t["gen_left_sample_raw_logits"] = tokens.long(), raw
        guided = raw[:, B:] + (raw[:, :B] - raw[:, B:]) * cfg["cfg_scale"]  # (L, B, V): the official CFG mix
        t["gen_left_sample_probs"] = torch.stack(
            [official_generate.sample(g[:, None], sample_logits=False, **cfg["sample"])[1] for g in guided], 1)
        checks["gen_left_sample"] = {"cfg_scale": cfg["cfg_scale"], **cfg["sample"], "rng_seed": rng_seed,
                                     "rerun_identical": bool(torch.equal(tokens, again))}

    # the T5 encoder: body ids, the end token, padding (a T5 tokenizer's max_length layout)
    torch.manual_seed(a.seed + 13)
    t5 = T5EncoderModel(T5Config(**cfg["t5"])).eval()
    ids = torch.zeros(B, T, dtype=torch.long)
    for i, n in enumerate(cfg["valid_lens"]):
        n = min(n, T)
        ids[i, : n - 1] = torch.randint(3, cfg["t5"]["vocab_size"], (n - 1,), generator=gen)
        ids[i, n - 1] = 1
    t["t5_input_ids"], t["t5_input_attention_mask"] = ids, t["t5_attention_mask"].clone()
    with torch.no_grad():
        t["t5_encoder_last_hidden_state"] = t5(input_ids=ids, attention_mask=t["t5_input_attention_mask"])[
            "last_hidden_state"]

    sd = {k: v.detach().contiguous().clone() for k, v in gpt.state_dict().items()
          if ".kv_cache." not in k and k not in ("freqs_cis", "causal_mask")}
    save_file(sd, str(out / "gpt.safetensors"))
    save_file({k: v.detach().contiguous().clone() for k, v in t5.state_dict().items()},
              str(out / "t5_tiny.safetensors"))
    save_file({k: v.contiguous() for k, v in t.items()}, str(out / "cases.safetensors"))
    commit = a.peer_commit or subprocess.run(["git", "-C", str(peer), "rev-parse", "HEAD"], capture_output=True,
                                             text=True).stdout.strip()
    grid = int(L ** 0.5)
    config = {
        "official_repo": "FoundationVision/LlamaGen", "official_commit": commit or "see --peer-src", "config_name": "B",
        "seed": a.seed, "torch_version": torch.__version__, "torch_num_threads": 1, "token_grid": [grid, grid],
        "tokens_per_image": L, "gpt_model_args": dataclasses.asdict(args),
        "gpt_derived": {"head_dim": args.dim // args.n_head,
                        "ffn_hidden_dim": gpt.layers[0].feed_forward.w1.out_features,
                        "uncond_embedding_shape": list(gpt.cls_embedding.uncond_embedding.shape), "caption_len_T": T,
                        "freqs_cis_rows": int(gpt.freqs_cis.shape[0])},
        "captions": {"valid_lens": cfg["valid_lens"], "B": B},
        "generation": {"cfg_scale": cfg["cfg_scale"], "cfg_interval": -1, "greedy": greedy, "sample": cfg["sample"],
                       "rng_seed": rng_seed, "max_new_tokens": L},
        "t5": {"transformers_version": transformers.__version__, "config": T5Config(**cfg["t5"]).to_dict(),
               "note": "weights in t5_tiny.safetensors (T5EncoderModel.state_dict(), float32)"},
        "made_by": "tools/llamagen_t2i_fixture.py (official gpt.py / generate.py imported unmodified)",
    }
    (out / "config.json").write_text(json.dumps(config, indent=1) + "\n")
    meta = {"tensors": {k: {"shape": list(v.shape), "dtype": str(v.dtype).replace("torch.", "")} for k, v in t.items()},
            "checks": {"generation": checks}}
    (out / "cases.json").write_text(json.dumps(meta, indent=1) + "\n")
    same = checks["gen_left_sample"]["rerun_identical"]
    print(f"wrote {out}: {len(t)} tensors; sampled tokens rerun identical: {same}")


if __name__ == "__main__":
    main()
