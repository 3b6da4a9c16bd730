"""Every performance figure in README.md and bench/README.md, rendered from the JSON in bench/results/.

The documents hold the figures only inside marked blocks::

    <!-- bench:NAME -->
    ...generated...
    <!-- /bench:NAME -->

``python bench/report.py --write`` re-renders every block from the committed JSON; ``--check`` (and the
test ``tests/test_bench_report.py``) fails when a block differs from what the JSON says, so a figure
cannot drift from the run that produced it. A block whose JSON is absent says so instead of a number.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any, Callable

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
DOCS = (BENCH.parent / "README.md", BENCH / "README.md", BENCH.parent / "weights" / "MODEL_CARD.md",
        BENCH.parent / "weights" / "MODEL_CARD_emoji_raster.md", BENCH.parent / "weights" / "MODEL_CARD_emoji_text.md")
BLOCK = re.compile(r"(<!-- bench:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /bench:(?P=name) -->)", re.S)


def load(name: str) -> dict | None:
    path = RESULTS / name
    return json.loads(path.read_text()) if path.is_file() else None


def f(x: float | None, digits: int = 2) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def ratio(x: float | None) -> str:
    return "—" if x is None else f"{x:.2f}x"


def pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f} %"


def _machine(env: dict | None) -> str:
    if not env:
        return "unknown machine"
    gpu = env.get("gpu")
    units = env.get("cpu_bf16_units")
    bf16 = (f", bfloat16 units: {', '.join(units) or 'none'}" if units is not None else "")
    isa = f" ({env['cpu_capability']}{bf16})" if env.get("cpu_capability") and not gpu else ""
    cpu = env.get("cpu_model") or env.get("processor") or env.get("machine")
    return (f"{gpu}" if gpu else f"{env.get('cpu_count')}-core {cpu} CPU{isa}") + \
        f", torch {env.get('torch')}"


def _table(columns: list[str], rows: list[list[str]]) -> list[str]:
    """Markdown table lines: header, separator, one line per row."""
    return ["| " + " | ".join(c) + " |" for c in [columns]] + ["|" + "---|" * len(columns)] + \
        ["| " + " | ".join(r) + " |" for r in rows]


def _missing(name: str, how: str) -> str:
    return f"_No committed result yet (`bench/results/{name}`): run `{how}`._\n"


# ---- blocks -----------------------------------------------------------------------------------------
def block_generate() -> str:
    """Batch 1, ours vs the official code in the same run: float32 speed-up, bf16 speed-up, agreement."""
    var, lg = load("var_cpu.json"), load("llamagen_cpu.json")
    if var is None and lg is None:
        return _missing("var_cpu.json / llamagen_cpu.json", "bench/run_cpu.sh")
    lines = ["| model | threads | ours fp32 | official fp32 | fp32 speed-up | same tokens as official | "
             "ours bf16 speed-up | bf16 tokens = our fp32 | peak RSS ours / official |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in (var or {}).get("results", []):
        if r.get("batch") != 1 or "official" not in r:
            continue
        bf = r.get("ours-bfloat16", {})
        mem = [r[k].get("memory", {}).get("rss_peak_mb") for k in ("ours", "official")]
        lines.append(
            f"| VAR {r['config']} (image) | {r['threads']} | {f(r['ours']['median_s'], 3)} s | "
            f"{f(r['official']['median_s'], 3)} s | **{f(r['ours'].get('speedup_vs_official'))}x** | "
            f"{'yes' if r.get('same_images_as_official') else 'no'} (image diff {r['max_abs_image_diff']:.1e}) | "
            f"{ratio(bf.get('speedup_vs_official'))} | {pct(bf.get('token_agreement_vs_ours_float32'))} | "
            f"{f(mem[0], 0)} / {f(mem[1], 0)} MB |")
    rows = (lg or {}).get("results", [])
    compiled = []
    for r in rows:
        if r["impl"] != "arnodes" or r["dtype"] != "float32" or r["batch"] != 1:
            continue
        step = r.get("compile", "off")
        same = [x for x in rows if (x["model"], x["threads"], x["batch"]) == (r["model"], r["threads"], 1)]
        off = next((x for x in same if x["impl"] == "official"), None)
        bf = next((x for x in same if x["impl"] == "arnodes" and x["dtype"] == "bfloat16"
                   and x.get("compile", "off") == step), {})
        if off is None:
            continue
        if step == "on":
            compiled.append(r)
        label = f"LlamaGen {r['model']}{', compiled step' if step == 'on' else ''} (tok/s)"
        lines.append(
            f"| {label} | {r['threads']} | {f(r['tokens_per_s'], 1)} | "
            f"{f(off['tokens_per_s'], 1)} | **{f(r.get('speedup_vs_official'))}x** | "
            f"{pct(r.get('token_agreement_vs_official'))} | {ratio(bf.get('speedup_vs_official'))} | "
            f"{pct(bf.get('token_agreement_vs_ours_float32'))} | {f(r['peak_rss_mb'], 0)} / {f(off['peak_rss_mb'], 0)} MB |")
    env = (var or lg or {}).get("env")
    note = ""
    if compiled:
        warm = max(r["warmup_s"] for r in compiled)
        note = (f"\n\"Compiled step\" rows run with `--compile on` (torch.compile of the decode step, inductor's C++ "
                f"backend; attention spans only the filled KV prefix). The default on the CPU stays eager: the first "
                f"image, compiling included, took up to {f(warm, 0)} s here, and compiled graphs live as long as "
                f"the process.\n")
    return ("Batch 1, CFG as one doubled batch, seeded sampling, the same weights; the official code measured in "
            f"the same run ({_machine(env)}). Speed-up = official time / ours.\n\n" + "\n".join(lines) + "\n"
            + note)


def block_quantize() -> str:
    acc, size = load("quantize_accuracy.json"), load("quantize_size.json")
    if acc is None:
        return _missing("quantize_accuracy.json", "python bench/quantize_accuracy.py --out bench/results/quantize_accuracy.json")
    lines = ["| model | quant | logits cosine vs float | argmax agreement (teacher-forced) | size vs all-bf16 |",
             "|---|---|---|---|---|"]
    sizes = {(r["model"], r["quant"]): r["ratio_total_vs_bf16"] for r in (size or {}).get("rows", [])}
    size_name = {"var-d16 (random init, scales 1..8)": "var-d16", "llamagen-GPT-B (random init)": "llamagen-GPT-B"}
    for r in acc["rows"]:
        ratio = sizes.get((size_name.get(r["model"], r["model"]), r["quant"]))
        lines.append(f"| {r['model']} | {r['quant']} | {f(r['logits_cosine'], 5)} | {pct(r['tf_token_agreement'])} | "
                     f"{f(ratio, 3)} |")
    for (model, quant), ratio in sizes.items():
        if model not in size_name.values() and quant != "none":
            lines.append(f"| {model} | {quant} | — | — | {f(ratio, 3)} |")
    return "\n".join(lines) + "\n"


def block_emoji() -> str:
    gen, sr = load("emoji_generate.json"), load("emoji_super_resolve.json")
    out = []
    if gen is not None:
        out.append(f"- Bundled model ({gen['model']}): one 64x64 image in {1000 * gen['median_s']:.0f} ms "
                   f"(batch {gen['batch']}, {gen['threads']} thread, median of {gen['repeats']}), "
                   f"after a {gen['load_s']:.1f} s load.")
    else:
        out.append(_missing("emoji_generate.json", "python bench/emoji_generate.py --out bench/results/emoji_generate.json"))
    if sr is not None:
        for r in sr["rows"]:
            out.append(f"- Super-resolution from {r['input_px']} px (x{r['scale']}), {sr['images']} renderings: "
                       f"{f(r['default_psnr'], 1)} dB vs bicubic {f(r['bicubic_psnr'], 1)} dB.")
    else:
        out.append(_missing("emoji_super_resolve.json",
                            "python bench/emoji_super_resolve.py --out bench/results/emoji_super_resolve.json"))
    return "\n".join(out) + "\n"


def block_emoji_model() -> str:
    e = load("emoji_model.json")
    if e is None:
        return _missing("emoji_model.json", "python -m arnodes.training.evaluate --weights weights --write "
                                            "--bench-json bench/results/emoji_model.json")
    m = e["metrics"]
    rows = [["tokenizer PSNR, held-out images (all styles)", f"{f(m['tokenizer_psnr_heldout'])} dB "
             f"({m['tokenizer_psnr_heldout_n']} images)", ""]]
    rows += [[f"tokenizer PSNR, held-out, {s}", f"{f(v)} dB", ""] for s, v in m["tokenizer_psnr_heldout_by_style"].items()]
    rows += [["nearest-reference class accuracy (style any)",
              f"{pct(m['nn_class_acc'])} ({m['eval_classes']} classes x seeds {m['seeds']})", ">= 90 %"],
             ["distinct-image rate across classes", pct(m["nn_distinct"]), ""],
             ["distinct drawings among 4 seeds, same class (mean)",
              f"{f(m['seed_distinct_mean'])} ({m['seed_classes']} classes; different = mean abs. difference "
              f"> {m['distinct_mad_threshold']:.0f}/255)", ">= 3"],
             ["same seed twice gives identical pixels", "yes" if m["same_seed_identical"] else "NO", "yes"],
             ["style judge (nearest drawing of the class, per style): accuracy on tokenizer reconstructions",
              f"{pct(m['style_judge_validation_acc'])} ({m['style_judge_validation_images']} images)", ""]]
    rows += [[f"samples judged in the asked style: {s}",
              f"{pct(v)} ({m['style_classes']} classes x {m.get('style_seeds', 1)} seeds)", ">= 80 %"]
             for s, v in m.get("style_acc", {}).items()]
    rows += [["style any: share of samples per style",
              ", ".join(f"{s} {pct(v)}" for s, v in m.get("style_any_share", {}).items()), ""]]
    data, tr = m["data"], e.get("training", {})
    lines = [f"Data v{data['version']}: {data['classes']} classes, {data['images']} images ("
             + ", ".join(f"{s} {n}" for s, n in data["images_by_style"].items())
             + f"), of which {data['placed']} placements and {data['heldout']} held out; the generator's "
               f"classes have {data['generator_images']} training images.\n"]
    for run in tr.get("restyle_runs", []):
        extra = (f", scale balance {run['scale_balance']}" if run.get("scale_balance") else "") + \
            (f", first-{run['coarse_scales']}-scales batch {run['coarse_batch']}" if run.get("coarse_batch") else "")
        lines.append(f"- Style fine-tune (`training/restyle.py`): {run['steps']} steps, batch {run['batch']}, "
                     f"lr {run['lr']}{extra}, {run['seconds']} s.")
    if "decoder_finetune_v2" in tr:
        r = tr["decoder_finetune_v2"]
        lines.append(f"- Decoder fine-tune on all styles (`training/finetune_decoder.py`): {r['steps']} steps, "
                     f"batch {r['batch']}, {r['seconds']} s.")
    lines.append(f"\nMeasured on a {_machine(e['env'])} (evaluation {m['eval_seconds']:.0f} s):\n")
    return "\n".join(lines + _table(["metric (`training/evaluate.py`)", "value", "target"], rows)) + "\n"


RASTER_EVAL = ("python -m arnodes.training.evaluate --weights weights --manifest emoji_raster.json --write "
               "--bench-json bench/results/emoji_raster_model.json")


def block_emoji_raster() -> str:
    e, g, ga = load("emoji_raster_model.json"), load("emoji_raster_gsd.json"), load("emoji_raster_gsd_above.json")
    if e is None or g is None or ga is None:
        return _missing("emoji_raster_model.json / emoji_raster_gsd.json / emoji_raster_gsd_above.json",
                        RASTER_EVAL + " (and with --decode gsd --bench-json bench/results/emoji_raster_gsd.json; "
                        "--decode gsd --draft-init above --bench-json bench/results/emoji_raster_gsd_above.json)")
    m, q, qa, tr = e["metrics"], g["metrics"], ga["metrics"], e.get("training", {})
    rows = [["tokenizer PSNR, held-out images (all styles)", f"{f(m['tokenizer_psnr_heldout'])} dB "
             f"({m['tokenizer_psnr_heldout_n']} images)", ""]]
    rows += [[f"tokenizer PSNR, held-out, {s}", f"{f(v)} dB", ""] for s, v in m["tokenizer_psnr_heldout_by_style"].items()]
    gsd = [(f"GSD decoding, {r['drafts']} drafts", r) for r in (q, qa)]
    for label, r in [("plain decoding", m)] + gsd:
        rows += [[f"nearest-reference class accuracy, {label}",
                  f"{pct(r['nn_class_acc'])} ({r['eval_classes']} classes x seeds {r['seeds']})", ">= 90 %"],
                 [f"distinct-image rate across classes, {label}", pct(r["nn_distinct"]), ">= 90 %"]]
    rows += [["distinct drawings among 4 seeds, same class (mean)",
              f"{f(m['seed_distinct_mean'])} ({m['seed_classes']} classes; different = mean abs. difference "
              f"> {m['distinct_mad_threshold']:.0f}/255)", ""],
             ["same seed twice gives identical pixels", "yes" if m["same_seed_identical"] else "NO", "yes"]]
    steps, secs = tr.get("steps", {}), tr.get("train_seconds", {})
    lines = [f"- Tokenizer fine-tune to one scale (`training/raster.py`, from {tr.get('tokenizer_from')}): "
             f"{steps.get('tokenizer')} steps, {secs.get('tokenizer')} s.",
             f"- GPT: {steps.get('generator')} steps, {secs.get('generator')} s on {tr.get('generator_images')} "
             f"images.",
             f"\nMeasured on a {_machine(e['env'])} with the defaults {m['defaults']} (evaluation "
             f"{m['eval_seconds']:.0f} s plain, {q['eval_seconds']:.0f} s / {qa['eval_seconds']:.0f} s GSD):\n"]
    return "\n".join(lines + _table(["metric (`training/evaluate.py --manifest emoji_raster.json`)", "value",
                                     "target"], rows)) + "\n"


TEXT_EVAL = ("python -m arnodes.training.evaluate_text --weights weights --sweep --write --samples "
             "weights/samples_text.png --bench-json bench/results/emoji_text_model.json")


def block_emoji_text() -> str:
    e = load("emoji_text_model.json")
    if e is None:
        return _missing("emoji_text_model.json", TEXT_EVAL)
    m, tr = e["metrics"], e.get("training", {})
    n = m["heldout_prompts"]
    rows = [["held-out prompt -> its emoji (nearest-reference class)",
             f"{pct(m['prompt_class_acc'])} ({n} prompts x seeds {m['prompt_seeds']})", ">= 80 %"]]
    counts = m.get("style_prompts", {})
    rows += [[f"style named -> sample in that style: {s}",
              pct(v) + (f" ({counts[s]} prompts)" if s in counts else ""), ">= 80 %"] for s, v in m["style_acc"].items()]
    rows += [["style named, all styles (mean)", pct(m["style_acc_mean"]), ">= 80 %"],
             ["style judge on tokenizer reconstructions of the references",
              f"{pct(m['style_judge_validation_acc'])} ({m['style_judge_validation_images']} images)", ""],
             ["4 seeds of one prompt: distinct drawings (mean)", f(m["seed_distinct_mean"]), ">= 3"],
             ["4 seeds of one prompt: prompts with >= 3 distinct drawings", pct(m["seed_at_least_3_share"]), ""],
             ["same seed twice gives identical pixels", "yes" if m["same_seed_identical"] else "NO", "yes"]]
    before = (f" after earlier runs of {tr['init_steps']} steps, {tr['init_seconds']} s in all (`--init`)"
              if tr.get("init_steps") else "")
    args = tr.get("args", {})
    prefix = (f"; prefix batch {args['prefix_batch']} captions on the first {args['prefix_tokens']} tokens"
              if args.get("prefix_batch") else "")
    lines = [f"- Training (`training/text_model.py`, GPT from {tr.get('generator_from')}): {tr.get('steps')} steps, "
             f"{tr.get('train_seconds')} s on {tr.get('images')} captioned images{before}; auxiliary loss weight "
             f"{args.get('aux_weight', 0)}, lr {args.get('lr')}{prefix}"
             + (f"; emoji sets {', '.join(tr['data_styles'])}." if tr.get("data_styles") else "."),
             f"\nMeasured on a {_machine(e['env'])} with the defaults {m['defaults']} (evaluation "
             f"{m['eval_seconds']:.0f} s):\n"]
    return "\n".join(lines + _table(["metric (`training/evaluate_text.py`)", "value", "target"], rows)) + "\n"

def block_emoji_control() -> str:
    c = load("emoji_control.json")
    if c is None:
        return _missing("emoji_control.json", "python bench/emoji_control.py --out bench/results/emoji_control.json")
    manifest = json.loads((BENCH.parent / "weights" / "emoji.json").read_text())
    runs = manifest.get("controls", {}).get(c["adapter"], {}).get("training", [])
    lines = [f"- Training (`training/control_adapter.py`): {r['steps']} steps, batch {r['batch']}, lr {r['lr']}, "
             f"{r['seconds']} s on {r['images']} images ({r['placed_images']} placed)." for r in runs]
    lines.append(f"\nMeasured on a {_machine(c['env'])} ({c['seconds']:.0f} s): {c['classes']} classes x "
                 f"{c['samples'] // c['classes']} off-centre placements and seeds, the same class and seed drawn "
                 f"with and without the map (`bench/emoji_control.py`).\n")
    t = c["targets"]
    rows = [["foreground IoU with the map's subject, controlled", f(c["controlled_iou"], 3), f">= {t['controlled_iou']}"],
            ["same, uncontrolled (same seeds)", f(c["uncontrolled_iou"], 3), ""],
            ["gain", f(c["iou_gain"], 3), f">= {t['iou_gain']}"]]
    rows += [[f"controlled IoU: {n}", f(v, 3), ""] for n, v in c["per_class_controlled_iou"].items()]
    return "\n".join(lines + _table(["metric", "value", "target"], rows)) + "\n"


def block_emoji_style_loss() -> str:
    r = load("emoji_style_loss.json")
    if r is None:
        return _missing("emoji_style_loss.json", "python -m arnodes.training.scale_loss --weights weights --label "
                                                 "NAME --json bench/results/emoji_style_loss.json")
    rows = []
    for label, b in r["bundles"].items():
        scales = list(b["cross_entropy"]["right"])
        for style, ce in b["cross_entropy"].items():
            rows.append([label, f"{style} style"] + [f(ce[sc], 3) for sc in scales])
    first = next(iter(r["bundles"].values()))
    floor = first["floor_first_scales"]
    lines = [f"Teacher-forced cross-entropy (nats per token) on {first['images']} "
             f"training drawings, per scale, with the drawing's own style, \"any\" and a wrong style "
             f"(`training/scale_loss.py`, {_machine(r['env'])}). The data's floor for the 1x1 token: "
             f"{f(floor['first_1_scales']['class_and_style'], 2)} nats given class and style, "
             f"{f(floor['first_1_scales']['class'], 2)} given the class alone.\n"]
    return "\n".join(lines + _table(["bundle", "style input"] + scales, rows)) + "\n"


def block_serving() -> str:
    d = load("serving_batch.json")
    if d is None:
        return _missing("serving_batch.json", "python bench/serving_batch.py --out bench/results/serving_batch.json")
    b, u, e = d["batched"], d["unbatched"], d["engine_generate_s"]
    same = d["identical_to_solo"]
    lines = [f"Measured on a {_machine(d['env'])}: {d['path']}; batching window "
             f"{d['batch_settings']['window_s'] * 1000:.0f} ms (grace {d['batch_settings']['grace_s'] * 1000:.0f} ms "
             f"once every announced request is there), at most {d['batch_settings']['max_images']} images "
             f"(`bench/serving_batch.py`). {same['identical']} of {same['checked']} images from batched bursts are "
             f"pixel-identical to the same request run alone.\n"]
    rows = [["1 (alone)", f(b["one_request_s"], 3), "1.00", f(u["one_request_s"], 3), "1.00", ""]]
    for bb, ub in zip(b["bursts"], u["bursts"]):
        n = str(bb["concurrent"])
        rows.append([n, f(bb["wall_s"], 3), f(bb["ratio_to_one"]), f(ub["wall_s"], 3), f(ub["ratio_to_one"]),
                     f"<= {d['targets'].get(n, '')}"])
    lines += _table(["concurrent requests", "batched: s to last image", "x one request", "one at a time: s",
                     "x one request", "target (batched)"], rows)
    one = e["1"]
    lines.append("\nGeneration alone in the same run (no decode, no HTTP): "
                 + ", ".join(f"batch {n}: {f(t, 3)} s ({f(t / one)}x batch 1)" for n, t in e.items()) + ".")
    both = {n: t + d["engine_decode_s"][n] for n, t in e.items()}
    lines.append("With decoding to pixels (still no HTTP, no PNG): "
                 + ", ".join(f"batch {n}: {f(t, 3)} s ({f(t / both['1'])}x batch 1)" for n, t in both.items()) + ".")
    lines.append("On this CPU a batch costs several times one image, so no serving path can reach the "
                 "target ratios here; the batching gain is the difference between the two columns.\n")
    return "\n".join(lines)


def block_gpu() -> str:
    gpu = load("gpu.json")
    if gpu is None:
        return ("_No GPU run is recorded yet: no GPU has been lent to this project so far. `bench/gpu.sh OUT_DIR` "
                "is ready for one (its `--smoke` mode runs the same code paths in the tests)._\n")
    lines = [f"Device: {_machine(gpu['env'])}; measured copy bandwidth {gpu['bandwidth_bytes_per_s'] / 1e9:.0f} GB/s.\n"]
    lines += _table(["model", "batch", "impl", "quant", "seconds / image batch", "speed-up vs official", "vs bf16",
                     "fraction of memory bound"],
                    [[r["model"], str(r["batch"]), r["impl"], r["quant"], f(r["seconds"], 3),
                      f(r.get("speedup_vs_official")), f(r.get("speedup_vs_bf16")), pct(r.get("fraction_of_bound"))]
                     for r in gpu["rows"]])
    return "\n".join(lines) + "\n"


def block_serving_gpu() -> str:
    """bench/gpu_serving.py: two large models switching under a memory cap that holds one; batching on the GPU."""
    d = load("gpu_serving.json")
    if d is None:
        return ("_No GPU run of the serving checks is recorded yet: no GPU has been lent to this project so far. "
                "`bench/gpu.sh OUT_DIR` runs them (`OUT_DIR/gpu_serving.json`, to copy into `bench/results/`)._\n")
    ev, b = d["eviction"], d["batching"]
    gb = 2 ** 30
    sizes = ", ".join(f"{n} {m['planned_bytes'] / gb:.2f} GiB" for n, m in ev["models"].items())
    cap = f"; the process may allocate at most {ev['device_cap_bytes'] / gb:.2f} GiB" if ev["device_cap_bytes"] else ""
    lines = [f"Device: {_machine(d['env'])}. Model cache (`bench/gpu_serving.py`): {sizes} (generator bfloat16); "
             f"cache budget {ev['budget_bytes'] / gb:.2f} GiB{cap}; models loaded {len(ev['loads'])} times.\n"]
    rows = []
    for st in ev["steps"]:
        where = ", ".join(f"{r['name']} on {r['resident_on']}" for r in st["resident"])
        outcome = "refused: " + st["refused"].split(":", 1)[1].split(";")[0].strip() if "refused" in st else \
            ("image" if st.get("image_finite") else "NON-FINITE image")
        peak = st.get("device_peak_bytes")
        rows.append([st["model"], str(st["batch"]), outcome, where, "—" if peak is None else f"{peak / gb:.2f} GiB",
                     f(st["seconds"], 2)])
    lines += _table(["model", "images", "outcome", "resident after", "device peak so far", "s"], rows)
    same = b["identical_to_solo"]
    lines.append(f"\nBatching on the device ({b['model']}, {b['dtype']}, {b['path']}; compile {d['compile']}): one "
                 f"request {f(b['one_request_s'], 3)} s; "
                 + "; ".join(f"{x['concurrent']} at once {f(x['wall_s'], 3)} s ({f(x['ratio_to_one'])}x one)"
                             for x in b["bursts"])
                 + f". {same['identical']} of {same['checked']} images identical to the same seed run alone"
                 + (f" (largest difference {same['max_pixel_diff']}/255 in a pixel channel)"
                    if same['identical'] < same['checked'] else "") + ".\n")
    return "\n".join(lines)


def _decode_table(d: dict) -> str:
    st = d["settings"]
    dtype = f", generator {st['dtype']}" if "dtype" in st else ""
    lines = [f"Raster decode strategies ({_machine(d['env'])}; batch 1, {st['seeds']} seeds per class, "
             f"window {st['window']}, {st['threads']} thread{dtype}; each model with its sampling settings):\n"]
    lines += _table(["model", "decode", "drafts", "images", "forwards per image", "fewer forwards than plain",
                     "seconds per image", "less time than plain", "window forwards committing 1 token",
                     "images that are store grids"],
                    [[r["model"], r["decode"], r.get("drafts", "-"), str(r["images"]),
                      f"{f(r['forwards_mean'], 1)} of {r['tokens']} tokens",
                      ratio(r["fewer_forwards_vs_plain"]), f(r["seconds_mean"], 3), ratio(r["less_time_vs_plain"]),
                      "-" if r.get("one_token_forwards") is None else f"{100 * r['one_token_forwards']:.0f} %",
                      "-" if r.get("images_in_store") is None else f"{100 * r['images_in_store']:.0f} %"]
                     for r in d["rows"]])
    return "\n".join(lines) + "\n"


def block_decode() -> str:
    d = load("decode_strategies.json")
    if d is None:
        return _missing("decode_strategies.json", "python bench/decode_strategies.py --out bench/results/decode_strategies.json")
    return _decode_table(d)


def block_decode_gpu() -> str:
    d = load("decode_gpu.json")
    if d is None:
        return ("_No GPU run of the decode strategies is recorded yet: no GPU has been lent to this project so far. "
                "`bench/gpu.sh OUT_DIR` runs it (`OUT_DIR/decode_gpu.json`, to copy into `bench/results/`)._\n")
    return _decode_table(d)


def block_kernels() -> str:
    k = load("linear_kernels.json")
    if k is None:
        return _missing("linear_kernels.json", "python bench/linear_kernels.py --out bench/results/linear_kernels.json")
    packs = k.get("engine_packs")
    packed_note = (f" The engine packs {', '.join(packs) or 'no'} weights on this CPU." if packs is not None else "")
    lines = [f"{_machine({'cpu_capability': k['cpu_capability'], **k['env']})}. GPT-B-sized weights "
             f"({k['few_rows'][0]['weight_mb']:.0f} MB float32), one pass over all of them; \"packed\" is oneDNN's "
             f"kernel on weights packed once (`layers.pack_for_cpu`), fewer than 4 rows padded to 4 as the engine runs "
             f"them (\"unpadded\": the same kernel on the rows alone).{packed_note}\n"]
    has_packed = any("packed_ms" in r for r in k["few_rows"])

    def timing(r: dict, kernel: str) -> str:
        if kernel + "_ms" not in r:
            return "—"
        unpadded = f"; {f(r['packed_unpadded_gb_s'], 1)} GB/s unpadded" if kernel == "packed" and "packed_unpadded_gb_s" in r else ""
        return f"{f(r[kernel + '_ms'], 1)} ms ({f(r[kernel + '_gb_s'], 1)} GB/s{unpadded})"
    lines += _table(["threads", "rows", "`F.linear`", "`W @ x.T`", "`W @ x.T` speed-up", *(["packed"] * has_packed)],
                    [[str(r["threads"]), str(r["rows"]), timing(r, "linear"), timing(r, "w_at_xt"), ratio(r["speedup"]),
                      *([timing(r, "packed")] * has_packed)] for r in k["few_rows"]])
    lines += [""] + _table(["GEMM 512x1024x3072", "threads", "GFLOP/s", "packed GFLOP/s"],
                           [[g["dtype"], str(g["threads"]), f(g["gflop_s"], 1),
                             f(g["packed_gflop_s"], 1) if "packed_gflop_s" in g else "—"] for g in k["gemm"]])
    return "\n".join(lines) + "\n"


def block_quantize_speed() -> str:
    """Decode-step time per quant mode on the CPU (quantize_speed.py): one GPT-B token, one VAR d16 4x4 scale."""
    q = load("quantize_speed.json")
    if q is None:
        return _missing("quantize_speed.json", "python bench/quantize_speed.py --threads 1 --repeats 9 --out bench/results/quantize_speed.json")
    keys = sorted({k for r in q["rows"] for k in r["step_ms"]}, key=lambda k: (k.split("/")[0], "32" not in k))
    if not keys:
        return "_No step timings in quantize_speed.json._\n"
    rows = []
    for r in q["rows"]:
        if not r["step_ms"]:
            continue
        cells = [f"{r['step_ms'][k]:.1f} ms ({ratio(r['speedup_vs_none'][k])})" if k in r["step_ms"] else "—" for k in keys]
        rows.append([r["model"], r["quant"], f(r["ratio_total_vs_bf16"], 3), *cells])
    threads = f"{q['threads']} thread" + ("s" if q["threads"] != 1 else "")
    head = (f"Decode step at batch 2 (CFG), {threads}, {_machine(q.get('env'))}: one GPT-B token, one VAR d16 "
            f"scale of 4x4 tokens, random init; in brackets the speed-up over the same model unquantized.\n")
    return head + "\n" + "\n".join(_table(["model", "quant", "size vs all-bf16", *[f"step {k}" for k in keys]], rows)) + "\n"


def block_floors() -> str:
    """How close float32 can get: the official code's 1-thread figures against this CPU's bounds
    (weight streaming for GPT-B's decode step, GEMM rate for VAR d16's FLOPs), from the same runs."""
    v, lg, k = load("var_cpu.json"), load("llamagen_cpu.json"), load("linear_kernels.json")
    if v is None or lg is None or k is None:
        return _missing("var_cpu.json / llamagen_cpu.json / linear_kernels.json", "bench/run_cpu.sh VAR_SRC LLAMAGEN_SRC")
    stream = next((r for r in k["few_rows"] if r["threads"] == 1 and r["rows"] == 2), None)
    gemm = next((g for g in k["gemm"] if g["threads"] == 1 and g["dtype"] == "float32"), None)
    var = next((r for r in v["results"] if r["config"] == "d16" and r["threads"] == 1 and "official" in r), None)
    gpt = next((r for r in lg["results"] if (r["impl"], r["model"], r["threads"], r["batch"], r["dtype"])
                == ("official", "gpt-b", 1, 1, "float32")), None)
    if not (stream and gemm and var and gpt and "work" in var):
        return "_The runs behind this paragraph are incomplete: rerun `bench/run_cpu.sh`._\n"
    best_gb_s = max(stream["linear_gb_s"], stream["w_at_xt_gb_s"], stream.get("packed_gb_s", 0.0))
    tok_floor = best_gb_s * 1e3 / stream["weight_mb"]  # tokens/s if a step only streamed the weights
    gpt_need = 1.5 * gpt["tokens_per_s"] / tok_floor
    work = var["work"]["transformer_gflop"] + var["work"]["decoder_gflop"]
    gemm_rate = max(gemm["gflop_s"], gemm.get("packed_gflop_s", 0.0))
    bf16 = next((g for g in k["gemm"] if g["threads"] == 1 and g["dtype"] == "bfloat16"), None)
    bf16_rate = max(bf16["gflop_s"], bf16.get("packed_gflop_s", 0.0)) if bf16 else 0.0
    var_floor_s = work / gemm_rate
    var_need = var_floor_s / (var["official"]["median_s"] / 1.5)
    return (f"Where float32 stops ({_machine({'cpu_capability': k['cpu_capability'], **k['env']})}, one thread): "
            f"GPT-B's decode step streams {stream['weight_mb']:.0f} MB of linear weights, at best "
            f"{best_gb_s:.1f} GB/s for 2 rows (table below), so float32 decode cannot pass {tok_floor:.1f} tok/s; "
            f"the official code runs {gpt['tokens_per_s']:.1f} tok/s, and 1.5x of it needs {100 * gpt_need:.0f} % of that "
            f"bound with every other op of the step for free. A VAR d16 image is {work / 1e3:.2f} TFLOP "
            f"(transformer {var['work']['transformer_gflop']:.0f} GFLOP with CFG's two rows, VQVAE decoder "
            f"{var['work']['decoder_gflop']:.0f} GFLOP; flop_counter), {var_floor_s:.1f} s at the best float32 GEMM "
            f"rate ({gemm_rate:.0f} GFLOP/s); the official code takes {var['official']['median_s']:.2f} s, and "
            f"1.5x of it needs {100 * var_need:.0f} % of that bound. A bfloat16 GEMM runs at "
            f"{bf16_rate / gemm_rate:.1f}x the float32 rate on this CPU.\n")


BLOCKS: dict[str, Callable[[], str]] = {"generate": block_generate, "quantize": block_quantize,
                                        "emoji": block_emoji, "gpu": block_gpu, "kernels": block_kernels,
                                        "decode": block_decode, "decode-gpu": block_decode_gpu,
                                        "emoji-model": block_emoji_model,
                                        "emoji-control": block_emoji_control, "emoji-raster": block_emoji_raster,
                                        "emoji-text": block_emoji_text, "serving": block_serving,
                                        "serving-gpu": block_serving_gpu,
                                        "emoji-style-loss": block_emoji_style_loss, "floors": block_floors,
                                        "quantize-speed": block_quantize_speed}


# ---- documents --------------------------------------------------------------------------------------
def render(text: str) -> str:
    def sub(m: re.Match) -> str:
        name = m.group("name")
        if name not in BLOCKS:
            raise SystemExit(f"error: unknown bench block {name!r}; known: {sorted(BLOCKS)}")
        return m.group(1) + BLOCKS[name]() + m.group(4)
    return BLOCK.sub(sub, text)


def stale() -> list[str]:
    """Documents whose blocks differ from the JSON."""
    return [str(p) for p in DOCS if p.is_file() and render(p.read_text()) != p.read_text()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--write", action="store_true", help="re-render the blocks in place")
    p.add_argument("--check", action="store_true", help="exit 1 if a block differs from the JSON")
    a = p.parse_args(argv)
    if a.write:
        for path in DOCS:
            path.write_text(render(path.read_text()))
    bad = stale()
    if bad and a.check:
        print("stale bench blocks in: " + ", ".join(bad), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
