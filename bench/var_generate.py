"""Benchmark VAR class-conditional generation: images/s and peak memory, ours beside the official code.

One "image" is the whole official ``autoregressive_infer_cfg`` job: every scale of the
KV-cached transformer with CFG as one doubled batch, sampling, and the VQVAE decode to
an image in [0, 1]. Ours runs the public path: ``engine.generate.generate`` on an empty
canvas, then ``tokenizer.decode_scales``.

Configurations: ``fixture`` (the tiny parity config and its weights, tests/fixtures/reference/var/tiny_a)
and ``d16`` / ``d30`` (the released VAR-d16 / -d30 + VQVAE architectures at 256 px, seeded random weights).
With ``--reference-src DIR`` (a checkout of FoundationVision/VAR, never committed) the official
models are built from DIR, given the SAME state dicts, and timed in the same process, alternating
with ours, with the same threads and settings; the time ratio ours/official is reported.

    python bench/var_generate.py --configs fixture d16 --batch 1 8 --out var.json
    python bench/var_generate.py --reference-src /tmp/var_ref --configs fixture d16 --batch 1

Memory (``--memory``, default on): on CUDA the peak extra ``torch.cuda.max_memory_allocated``
of one generation; on CPU each implementation runs alone in a fresh subprocess and reports the
resident-set high-water mark (``ru_maxrss``) after loading and after generating, and their
difference (the generation's peak above the loading peak; 0 when generation needs less than
loading transiently did).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
from pathlib import Path
from typing import Any, Callable

import torch

from common import cuda_peak_bytes, env_info, maxrss_bytes, run_json_subprocess, summarize, time_interleaved, write_json

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "fixtures" / "reference" / "var" / "tiny_a"
CONFIGS = ("fixture", "d16", "d30")
RELEASED = {"d16": "var-d16", "d30": "var-d30"}  # bench name -> generator preset; all use the released VQVAE
IMAGE_MATCH_ATOL = 1e-3  # decoder rounding is ~1e-5; one different token moves pixels by far more
SAMPLING = {"greedy": {"top_k": 1, "top_p": 0.0}, "demo": {"top_k": 900, "top_p": 0.95}}


# ---- configs and weights --------------------------------------------------------------------------
def configs(name: str):
    """(tokenizer config, generator config) for a bench configuration."""
    from arnodes.engine.models.var import PRESETS as VAR_PRESETS
    from arnodes.engine.models.var import VARConfig
    from arnodes.engine.tokenizers.msvq import PRESETS as VAE_PRESETS
    from arnodes.engine.tokenizers.msvq import MSVQConfig
    if name in RELEASED:
        return VAE_PRESETS["vae_ch160v4096z32"], VAR_PRESETS[RELEASED[name]]
    if name != "fixture":
        raise SystemExit(f"error: unknown config {name!r}; expected one of {CONFIGS}")
    cfg = json.loads((FIXTURE / "config.json").read_text())
    vk, fixed, ak = cfg["vqvae_kwargs"], cfg["vqvae_fixed"], cfg["var_kwargs"]
    tok = MSVQConfig(vocab_size=vk["vocab_size"], z_channels=vk["z_channels"], ch=vk["ch"],
                     ch_mult=tuple(fixed["ch_mult"]), num_res_blocks=fixed["num_res_blocks"],
                     patch_nums=tuple(vk["v_patch_nums"]), quant_resi=fixed["quant_resi"],
                     share_quant_resi=vk["share_quant_resi"], using_sa=fixed["using_sa"],
                     using_mid_sa=fixed["using_mid_sa"], beta=fixed["beta"], quant_conv_ks=fixed["quant_conv_ks"])
    gen = VARConfig(num_classes=ak["num_classes"], depth=ak["depth"], embed_dim=ak["embed_dim"],
                    num_heads=ak["num_heads"], mlp_ratio=ak.get("mlp_ratio", 4.0), norm_eps=ak["norm_eps"],
                    shared_aln=ak["shared_aln"], attn_l2_norm=ak["attn_l2_norm"], patch_nums=tuple(ak["patch_nums"]),
                    vocab_size=vk["vocab_size"], cvae=vk["z_channels"])
    return tok, gen


def random_state_dict(model: torch.nn.Module, seed: int, float_dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """Seeded random weights in the model's (= the official) layout, without initialising the model:
    fan-in scaled weights, zero biases, unit norm gains, small embeddings; derived buffers as they must be.
    ``float_dtype``: make the floating tensors in this dtype (half the host memory for a bfloat16 run)."""
    gen = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}
    for k, v in model.state_dict().items():
        t = torch.empty(v.shape, dtype=float_dtype if float_dtype is not None and v.is_floating_point() else v.dtype)
        if not t.is_floating_point() or k.endswith(("zero_k_bias", "attn_bias_for_masking", "lvl_1L")):
            t.zero_()  # buffers; replaced below / recomputed by post_load
        elif k.endswith("weight") and "norm" in k.rsplit(".", 2)[-2]:
            t.fill_(1.0)
        elif t.ndim >= 2 and k.endswith("weight") and "embed" not in k and "embedding" not in k:
            t.normal_(0, 1 / math.sqrt(math.prod(t.shape[1:])), generator=gen)
        elif k.endswith("bias") or k.endswith("ema_vocab_hit_SV"):
            t.zero_()
        else:
            t.normal_(0, 0.02, generator=gen)
        sd[k] = t
    if hasattr(model, "_derived_buffers"):
        sd["lvl_1L"], sd["attn_bias_for_masking"] = model._derived_buffers(torch.device("cpu"))
    return sd


def state_dicts(name: str) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(VQVAE state dict, VAR state dict), official key names."""
    if name == "fixture":
        from safetensors.torch import load_file
        return load_file(str(FIXTURE / "vae.safetensors")), load_file(str(FIXTURE / "var.safetensors"))
    from arnodes.engine.checkpoint import build_on_meta
    from arnodes.engine.models.var import VAR
    from arnodes.engine.tokenizers.msvq import MSVQTokenizer
    tok_cfg, gen_cfg = configs(name)
    return (random_state_dict(build_on_meta(lambda: MSVQTokenizer(tok_cfg)), 1),
            random_state_dict(build_on_meta(lambda: VAR(gen_cfg)), 2))


# ---- the two implementations ----------------------------------------------------------------------
def build_ours(name: str, vae_sd: dict, var_sd: dict, device: str, batch: int, cfg_scale: float,
               sampling: dict, seed: int, dtype: str = "float32",
               tokens_out: dict | None = None, quant: str = "none") -> Callable[[], torch.Tensor]:
    """Our public path; the generator in ``dtype`` (the tokenizer stays float32). The last call's
    tokens go to ``tokens_out["tokens"]`` (flattened over scales) when given. Takes the state dicts
    over (empties them: the modules hold the only references, as the loader holds a file's), so
    callers that build again pass copies."""
    from arnodes.engine.classes import ClassNames
    from arnodes.engine.conditioning import Conditioning
    from arnodes.engine import tasks
    from arnodes.engine.generate import generate
    from arnodes.engine.layers import pack_for_cpu
    from arnodes.engine.loader import ModelBundle, build_module
    from arnodes.engine.quantize import quantize_model
    from arnodes.engine.sampling import SamplingParams
    tok_cfg, gen_cfg = configs(name)
    tok = build_module("msvq", tok_cfg, vae_sd, f"{name}:vae", device, consume=True)
    var = quantize_model(build_module("var", gen_cfg, var_sd, f"{name}:var", device, getattr(torch, dtype), consume=True),
                         quant)
    var = pack_for_cpu(var)  # nothing else holds the float weights (as in load_generator_file)
    bundle = ModelBundle(name=name, family="var", tokenizer=tok, generator=var,
                         classes=ClassNames([str(i) for i in range(gen_cfg.num_classes)]), image_size=tok_cfg.image_size)
    cond = Conditioning(tuple(labels(batch, gen_cfg.num_classes)), cfg=cfg_scale)
    params = SamplingParams(top_k=sampling["top_k"], top_p=sampling["top_p"])

    @torch.no_grad()
    def run() -> torch.Tensor:
        out = generate(bundle, cond, params=params, seed=seed)
        if tokens_out is not None:
            tokens_out["tokens"] = torch.cat([g.reshape(g.shape[0], -1) for g in out.grids], 1)
        return tasks.decode(bundle, out).add_(1).mul_(0.5)  # decodes the f_hat built while generating
    run.generator = var  # what a step reads (the GPU bench counts its bytes)
    return run


def build_official(src: Path, name: str, vae_sd: dict, var_sd: dict, device: str, batch: int, cfg_scale: float,
                   sampling: dict, seed: int) -> Callable[[], torch.Tensor]:
    """The official VQVAE + VAR from ``src``, built uninitialised and given the same tensors."""
    if str(src) not in sys.path:
        sys.path.insert(0, str(src))
    from models.basic_vae import Decoder, Encoder  # noqa: E402  (the official repo's top-level packages)
    from models.var import VAR as OfficialVAR
    from models.vqvae import VQVAE
    tok_cfg, g = configs(name)
    with contextlib.redirect_stdout(sys.stderr), skip_init():  # its constructor prints
        vae = VQVAE(vocab_size=tok_cfg.vocab_size, z_channels=tok_cfg.z_channels, ch=tok_cfg.ch, test_mode=True,
                    share_quant_resi=tok_cfg.share_quant_resi, v_patch_nums=tok_cfg.patch_nums,
                    quant_resi=tok_cfg.quant_resi, quant_conv_ks=tok_cfg.quant_conv_ks)
        if tok_cfg.ch_mult != (1, 1, 2, 2, 4) or tok_cfg.num_res_blocks != 2:  # the fixture's narrower VAE
            dd = dict(dropout=0.0, ch=tok_cfg.ch, z_channels=tok_cfg.z_channels, in_channels=3, ch_mult=tok_cfg.ch_mult,
                      num_res_blocks=tok_cfg.num_res_blocks, using_sa=tok_cfg.using_sa, using_mid_sa=tok_cfg.using_mid_sa)
            vae.encoder, vae.decoder = Encoder(double_z=False, **dd), Decoder(**dd)
        var = OfficialVAR(vae_local=vae, num_classes=g.num_classes, depth=g.depth, embed_dim=g.embed_dim,
                          num_heads=g.num_heads, mlp_ratio=g.mlp_ratio, drop_rate=0.0, attn_drop_rate=0.0,
                          drop_path_rate=0.0, norm_eps=g.norm_eps, shared_aln=g.shared_aln, cond_drop_rate=0.0,
                          attn_l2_norm=g.attn_l2_norm, patch_nums=g.patch_nums,
                          flash_if_available=False, fused_if_available=False)
    vae.load_state_dict(dict(vae_sd), strict=True, assign=True)
    var.load_state_dict(dict(var_sd), strict=True, assign=True)
    vae, var = vae.to(device).eval(), var.to(device).eval()
    var.rng = torch.Generator(device=device)
    label_B = torch.tensor(labels(batch, g.num_classes), device=device)

    @torch.no_grad()
    def run() -> torch.Tensor:
        return var.autoregressive_infer_cfg(B=batch, label_B=label_B, g_seed=seed, cfg=cfg_scale,
                                            top_k=sampling["top_k"], top_p=sampling["top_p"], more_smooth=False)
    return run


@contextlib.contextmanager
def skip_init():
    """Build modules without initialising their weights (they are replaced by the state dict right after);
    the official constructor calls ``.item()``, so it cannot be built on the meta device."""
    classes = (torch.nn.Linear, torch.nn.Conv2d, torch.nn.LayerNorm, torch.nn.GroupNorm, torch.nn.Embedding)
    saved = {c: c.reset_parameters for c in classes}
    try:
        for c in classes:
            c.reset_parameters = lambda self: None
        yield
    finally:
        for c, fn in saved.items():
            c.reset_parameters = fn


def labels(batch: int, num_classes: int) -> list[int]:
    return [(207 + 97 * i) % num_classes for i in range(batch)]


IMPLS = {"ours": "float32", "ours-bfloat16": "bfloat16", "ours-float16": "float16"}  # ours, per dtype


def build(impl: str, src: Path | None, name: str, device: str, batch: int, args: argparse.Namespace,
          sds: tuple[dict, dict], tokens_out: dict | None = None) -> Callable[[], torch.Tensor]:
    common = dict(device=device, batch=batch, cfg_scale=args.cfg, sampling=SAMPLING[args.sampling], seed=args.seed)
    if impl in IMPLS:
        return build_ours(name, *sds, **common, dtype=IMPLS[impl], tokens_out=tokens_out)
    return build_official(src, name, *sds, **common)


# ---- measurements ---------------------------------------------------------------------------------
def flop_counts(name: str, batch: int) -> dict[str, float]:
    """GFLOP of one generation, counted by ``torch.utils.flop_counter`` on the meta device (no weights):
    the transformer over every scale at batch x 2 rows (CFG), counted as one teacher-forced pass (the
    cached path does the same products, its attention over the prefix only), and the VQVAE decoder."""
    from torch.utils.flop_counter import FlopCounterMode

    from arnodes.engine.models.var import VAR
    from arnodes.engine.tokenizers.msvq import MSVQTokenizer
    tok_cfg, gen_cfg = configs(name)
    with torch.device("meta"), torch.no_grad():
        var, tok = VAR(gen_cfg), MSVQTokenizer(tok_cfg)
        var.lvl_1L, var.attn_bias_for_masking = var.lvl_1L.to("meta"), var.attn_bias_for_masking.to("meta")
        labels_meta = torch.zeros(2 * batch, dtype=torch.int64)
        var_input = torch.zeros(2 * batch, gen_cfg.tokens_per_image - var.first_l, gen_cfg.cvae)
        with FlopCounterMode(display=False) as transformer:
            var(labels_meta, var_input)
        last = tok_cfg.patch_nums[-1]
        with FlopCounterMode(display=False) as decoder:
            tok.decoder(tok.post_quant_conv(torch.zeros(batch, tok_cfg.z_channels, last, last)))
    return {"transformer_gflop": transformer.get_total_flops() / 1e9, "decoder_gflop": decoder.get_total_flops() / 1e9}


def memory_worker(job: dict) -> dict:
    """One implementation alone in this fresh process: RSS high-water marks around one generation."""
    torch.set_num_threads(job["threads"])
    args = argparse.Namespace(**job["args"])
    before = maxrss_bytes()  # interpreter + torch + arnodes imports
    sds = state_dicts(job["config"])
    fn = build(job["impl"], Path(job["src"]) if job["src"] else None, job["config"], job["device"], job["batch"],
               args, sds)
    del sds
    loaded = maxrss_bytes()
    fn()
    peak = maxrss_bytes()
    return {"rss_before_load_mb": before / 2**20, "rss_after_load_mb": loaded / 2**20, "rss_peak_mb": peak / 2**20, "generation_delta_mb": (peak - loaded) / 2**20}


def measure_memory(impl: str, name: str, device: str, batch: int, args: argparse.Namespace,
                   fn: Callable[[], torch.Tensor]) -> dict:
    if torch.device(device).type == "cuda":
        return {"cuda_peak_extra_mb": cuda_peak_bytes(fn, device) / 2**20}
    job = {"impl": impl, "config": name, "device": device, "batch": batch, "threads": torch.get_num_threads(),
           "src": str(args.reference_src) if args.reference_src else None,
           "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    return run_json_subprocess([str(Path(__file__).resolve()), "--memory-worker", json.dumps(job)])


def bench_one(name: str, device: str, batch: int, args: argparse.Namespace) -> dict[str, Any]:
    sds = state_dicts(name)
    impls = ["ours"] + [f"ours-{d}" for d in args.dtypes if d != "float32"] + (["official"] if args.reference_src else [])
    tokens: dict[str, dict] = {impl: {} for impl in impls}
    built = {impl: build(impl, args.reference_src, name, device, batch, args, (dict(sds[0]), dict(sds[1])),
                         tokens[impl]) for impl in impls}
    last: dict[str, torch.Tensor] = {}

    def keep_last(impl: str) -> Callable[[], None]:
        def run() -> None:
            last[impl] = built[impl]()
        return run
    fns = {impl: keep_last(impl) for impl in impls}
    times = time_interleaved(fns, device, warmup=args.warmup, repeats=args.repeats)
    row: dict[str, Any] = {"config": name, "batch": batch, "device": device, "threads": torch.get_num_threads(),
                           "work": flop_counts(name, batch), **{impl: summarize(times[impl], batch) for impl in impls}}
    for impl in impls:
        row[impl]["images_per_s"] = row[impl].pop("items_per_s")
        if impl in IMPLS and impl != "ours":  # half precision: how many tokens our float32 run also chose
            same = (tokens[impl]["tokens"] == tokens["ours"]["tokens"]).float().mean().item()
            row[impl]["token_agreement_vs_ours_float32"] = same
    if "official" in fns:
        for impl in impls[:-1]:
            row[impl]["speedup_vs_official"] = row["official"]["median_s"] / row[impl]["median_s"]
        row["time_ratio_ours_over_official"] = row["ours"]["median_s"] / row["official"]["median_s"]
        # same seed, same weights: the same images (the official call returns images only; equal images
        # within the float rounding of the decoder mean equal tokens)
        row["max_abs_image_diff"] = (last["ours"].float() - last["official"].float()).abs().max().item()
        row["same_images_as_official"] = row["max_abs_image_diff"] < IMAGE_MATCH_ATOL
    if args.memory:
        for impl in impls:
            row[impl]["memory"] = measure_memory(impl, name, device, batch, args, built[impl])
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=CONFIGS)
    p.add_argument("--batch", nargs="+", type=int, default=[1, 8])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", nargs="+", type=int, default=[torch.get_num_threads()],
                   help="thread counts to measure, one after the other (e.g. 1 2)")
    p.add_argument("--dtypes", nargs="+", default=["float32"], choices=["float32", "bfloat16", "float16"],
                   help="our generator's dtypes (the official code runs float32)")
    p.add_argument("--cfg", type=float, default=1.5)
    p.add_argument("--sampling", choices=sorted(SAMPLING), default="greedy",
                   help="greedy: top_k=1; demo: the official demo's top_k=900, top_p=0.95 (seeded)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--repeats-large", type=int, default=None,
                   help="repeats for the d16 / d30 configs (default: --repeats); it takes seconds per image on a CPU")
    p.add_argument("--warmup-large", type=int, default=None, help="warm-up calls for d16 / d30 (default: --warmup)")
    p.add_argument("--dtypes-large", nargs="+", default=None, choices=["float32", "bfloat16", "float16"],
                   help="our dtypes for d16 / d30 (default: --dtypes); bf16 d16 takes minutes per image on a CPU "
                        "without native bf16 matmuls")
    p.add_argument("--memory", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--reference-src", type=Path, default=None, help="checkout of FoundationVision/VAR")
    p.add_argument("--out", default=None)
    p.add_argument("--memory-worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.memory_worker:
        print(json.dumps(memory_worker(json.loads(args.memory_worker))))
        return 0
    if args.reference_src is not None and not (args.reference_src / "models" / "var.py").is_file():
        raise SystemExit(f"error: {args.reference_src} is not a FoundationVision/VAR checkout (no models/var.py)")
    results = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for name in args.configs:
            for batch in args.batch:
                run_args = argparse.Namespace(**vars(args))
                if name in RELEASED:
                    run_args.repeats = args.repeats if args.repeats_large is None else args.repeats_large
                    run_args.warmup = args.warmup if args.warmup_large is None else args.warmup_large
                    run_args.dtypes = args.dtypes if args.dtypes_large is None else args.dtypes_large
                results.append(bench_one(name, args.device, batch, run_args))
    write_json({"bench": "var_generate", "env": env_info(args.device),
                "settings": {"cfg": args.cfg, "sampling": args.sampling, **SAMPLING[args.sampling], "seed": args.seed,
                             "warmup": args.warmup, "repeats": args.repeats, "repeats_large": args.repeats_large, "warmup_large": args.warmup_large,
                             "threads": args.threads, "dtypes": args.dtypes, "official_dtype": "float32",
                             "reference": "FoundationVision/VAR" if args.reference_src else None},
                "results": results}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
