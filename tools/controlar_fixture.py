"""Make a ControlAR parity case with the OFFICIAL code (hustvl/ControlAR), for tests/fixtures/reference/controlar/.

The official sources are imported from ``--peer-src`` (a checkout outside this repository, never
committed). Runs on the CPU in float32 with transformers 4.x (the ViT key layout of the released
checkpoints). What is computed follows tests/fixtures/reference/README.controlar.md: the control
path's intermediates, teacher-forced logits with and without the condition, and greedy KV-cache
decoding with and without guidance. The official ``generate()`` fails in float32, so decoding
calls ``Transformer.forward`` step by step as generate's prefill / decode do, with
``condition_token`` preset in float32.

    PYTHONPATH=/tmp/tf445 python tools/controlar_fixture.py --peer-src /tmp/ControlAR \
        --out tests/fixtures/reference/controlar/tiny_c --seed 5
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import types
from pathlib import Path

import torch
from safetensors.torch import save_file

CONFIG_C = {
    "gpt": dict(dim=32, n_layer=9, n_head=4, multiple_of=32, vocab_size=128, num_classes=7, block_size=25,
                cls_token_num=1, condition_token_num=0, image_size=80, class_dropout_prob=0.1, model_type="c2i",
                token_dropout_p=0.0, attn_dropout_p=0.0, resid_dropout_p=0.0, ffn_dropout_p=0.0, drop_path_rate=0.0),
    "vit": dict(hidden_size=384, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
                hidden_act="gelu", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                layer_norm_eps=1e-12, image_size=12, patch_size=4, num_channels=3, qkv_bias=True),
    "control_size": 20,
    "labels": [1, 4, 6],
    "cfg_scale": 2.0,
}


def _import_official(peer: Path, vit_config: dict):
    """gpt.py and vit_adapter.py unmodified; the ViT weights are not downloaded: AutoModel is shimmed."""
    import transformers

    sys.path.insert(0, str(peer))
    import autoregressive.models.vit_adapter as vit_adapter

    shim = types.SimpleNamespace(from_pretrained=lambda *_a, **_k: transformers.ViTModel(
        transformers.ViTConfig(**vit_config), add_pooling_layer=False))
    vit_adapter.AutoModel = shim
    from autoregressive.models import gpt
    return gpt


def _seeded_overwrite(model: torch.nn.Module, gen: torch.Generator) -> None:
    """Values large enough that every part of the path matters (the official init zeroes the MLPs), rounded
    to bfloat16 so the file can store them as bfloat16 exactly (the run itself is float32)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2 and "embed" not in name and "cls_token" not in name:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=gen) / fan_in ** 0.5)
            elif name.endswith("norm.weight") or "layernorm" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * (0.1 if p.ndim == 1 else 1.0))
            p.copy_(p.to(torch.bfloat16).float())


def _edges(batch: int, size: int, gen: torch.Generator) -> torch.Tensor:
    """Synthetic {0, 255} edge maps: a random rectangle outline and a diagonal per image."""
    out = torch.zeros(batch, size, size, dtype=torch.int64)
    for b in range(batch):
        y0, x0 = (int(v) for v in torch.randint(0, size // 2, (2,), generator=gen))
        y1, x1 = (int(v) for v in torch.randint(size // 2 + 1, size, (2,), generator=gen))
        out[b, y0, x0:x1] = out[b, y1, x0:x1] = out[b, y0:y1, x0] = out[b, y0:y1, x1] = 255
        idx = torch.arange(size)
        out[b, idx, (idx + 3 * b) % size] = 255
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--peer-src", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=5)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    import transformers

    cfgC = CONFIG_C
    gpt = _import_official(Path(a.peer_src), cfgC["vit"])
    torch.manual_seed(a.seed)
    model = gpt.Transformer(gpt.ModelArgs(**cfgC["gpt"]))
    gen = torch.Generator().manual_seed(a.seed)
    _seeded_overwrite(model, gen)
    L, V, nc = cfgC["gpt"]["block_size"], cfgC["gpt"]["vocab_size"], cfgC["gpt"]["num_classes"]
    labels = torch.tensor(cfgC["labels"])
    B = len(labels)
    edges = _edges(B, cfgC["control_size"], gen)
    img = (2 * (edges.float() / 255 - 0.5)).unsqueeze(1).repeat(1, 3, 1, 1)
    tokens = torch.randint(0, V, (B, L), generator=gen)
    c: dict[str, torch.Tensor] = {"control_edges_uint8": edges, "control_image": img, "labels": labels,
                                  "tf_tokens": tokens}
    model.eval()
    with torch.no_grad():
        vit = model.adapter(img)
        c["adapter_vit_tokens"] = vit
        c["adapter_mlp_out"] = model.adapter_mlp(vit)
        c["condition_token"] = model.condition_mlp(c["adapter_mlp_out"], train=False)
        c["condition_token_null"] = model.condition_mlp(torch.zeros_like(c["adapter_mlp_out"]), train=False)
        every = model.layer_internal
        blocks = [i for i in range(model.n_layer) if i % every == 0]
        for i in blocks:
            c[f"condition_inject_layer{i}"] = model.condition_layers[i // every](c["condition_token"])
        model.train()  # the teacher-forced path is the training one; every dropout is 0
        for name, prob in (("tf_logits", 1e-12), ("tf_logits_null", 1.0)):
            model.cls_embedding.dropout_prob = prob
            c[name] = model(idx=tokens[:, :-1], cond_idx=labels, condition=img)[0]
        model.cls_embedding.dropout_prob = cfgC["gpt"]["class_dropout_prob"]
        model.eval()
        for prefix, scale in (("kv_greedy_cfg1", 1.0), ("kv_greedy_cfg", cfgC["cfg_scale"])):
            guided = scale > 1.0
            lab = torch.cat([labels, torch.full_like(labels, nc)]) if guided else labels
            a_mlp = c["adapter_mlp_out"]
            cond_in = torch.cat([a_mlp, torch.zeros_like(a_mlp)]) if guided else a_mlp
            model.setup_caches(max_batch_size=len(lab), max_seq_length=L + 1, dtype=torch.float32)
            model.condition_token = model.condition_mlp(cond_in, train=False)
            raw, out = [], []
            logits = model(None, cond_idx=lab, input_pos=torch.arange(1))[0][:, -1]
            for t in range(L):
                if t > 0:
                    feed = out[-1].repeat(2 if guided else 1).unsqueeze(1)
                    logits = model(feed, cond_idx=None, input_pos=torch.tensor([t]))[0][:, -1]
                raw.append(logits.clone())
                mixed = logits[B:] + (logits[:B] - logits[B:]) * scale if guided else logits
                out.append(mixed.argmax(-1))
            c[f"{prefix}_tokens"] = torch.stack(out, 1)
            c[f"{prefix}_raw_logits"] = torch.stack(raw)
    out_dir = Path(a.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    sd = {k: (v.to(torch.bfloat16) if v.is_floating_point() else v).contiguous()
          for k, v in model.state_dict().items() if "kv_cache" not in k}
    save_file(sd, str(out_dir / "gpt.safetensors"))
    save_file({k: v.contiguous() for k, v in c.items()}, str(out_dir / "cases.safetensors"))
    commit = subprocess.run(["git", "-C", a.peer_src, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    model_args = {k: v for k, v in vars(model.config).items()}
    config = {"official_repo": "hustvl/ControlAR", "official_commit": commit, "config_name": "C (arnodes)",
              "seed": a.seed, "torch_version": torch.__version__, "transformers_version": transformers.__version__,
              "token_grid": [int(L ** 0.5)] * 2, "tokens_per_image": L, "gpt_model_args": model_args,
              "gpt_derived": {"layer_internal": every, "condition_injected_before_blocks": blocks, "null_class_index": nc},
              "adapter": {"kind": "ViT_Adapter (vit_adapter.py)", "vit_config": cfgC["vit"]},
              "control_image": {"size": [cfgC["control_size"]] * 2}, "labels": cfgC["labels"],
              "cfg_scale": cfgC["cfg_scale"], "made_by": "tools/controlar_fixture.py"}
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    meta = {"tensors": {k: {"shape": list(v.shape), "dtype": str(v.dtype).replace("torch.", "")} for k, v in c.items()}}
    (out_dir / "cases.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"wrote {out_dir}: {len(c)} tensors, blocks {blocks}")


if __name__ == "__main__":
    main()
