"""The arnodes web app: layout and wiring only (the handlers live in callbacks.py).

`build_app(runner)` has no side effects (no model is loaded, nothing is parsed at
import); `launch()` is what `arnodes ui` calls. Every task button runs a node
graph through the runner, in one shared pool of device slots (`concurrency_id="device"`),
behind a bounded queue; the engine serialises work per model and batches generate requests.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

import gradio as gr

from ..engine.choices import CONTROL_TYPES, DECODE_STRATEGIES, DEVICES, DRAFT_INITS, DTYPES, GSD_GROUP_MASS, QUANTS
from . import presets
from .callbacks import MAX_UI_SEED, Callbacks, WorkflowRunner
from .theme import CSS, theme

LIGHT = {"concurrency_limit": None, "show_progress": "hidden"}
SEND_TARGETS = (("Inpaint", "inpaint"), ("Edit", "edit"), ("Upscale", "superres"), ("Variation", "control"))


@dataclass
class Sampling:
    """The class picker, the prompt boxes and the sampler widgets every task tab has."""

    classes: gr.Dropdown
    seed: gr.Number
    randomize: gr.Checkbox
    cfg: gr.Slider
    top_k: gr.Slider
    top_p: gr.Slider
    temperature: gr.Slider
    prompt: gr.Textbox
    negative: gr.Textbox

    @property
    def after_classes(self) -> list[Any]:
        return [self.seed, self.randomize, self.cfg, self.top_k, self.top_p, self.temperature]

    @property
    def prompts(self) -> list[Any]:
        """The callbacks' last two inputs: a prompt makes the task text-conditioned."""
        return [self.prompt, self.negative]


@dataclass
class Results:
    gallery: gr.Gallery
    files: gr.File
    selected: gr.State
    send: dict[str, gr.Button]


def sampling_controls(choices: list[tuple[str, str]], label: str = "Class") -> Sampling:
    d = presets.SAMPLER_DEFAULTS
    classes = gr.Dropdown(choices, value=[choices[0][1]] if choices else [], multiselect=True, max_choices=8,
                          allow_custom_value=True, filterable=True, label=label,
                          info="Type to search; names or ids, several allowed (class-conditional models)")
    prompt = gr.Textbox("", label="Prompt", lines=2, max_lines=6,
                        placeholder="Text-to-image models: describe the picture (the classes above are then unused)")
    with gr.Row():
        seed = gr.Number(0, precision=0, minimum=0, maximum=MAX_UI_SEED, label="Seed", scale=3)
        randomize = gr.Checkbox(True, label="🎲 random", scale=1, min_width=90)
    with gr.Accordion("Sampling", open=False):
        cfg = gr.Slider(0, 15, d["cfg"], step=0.1, label="Guidance (CFG)", info="Higher = more like the class")
        top_k = gr.Slider(0, 1000, d["top_k"], step=1, label="Top-k", info="0 = off")
        top_p = gr.Slider(0.05, 1.0, d["top_p"], step=0.01, label="Top-p", info="1 = off")
        temperature = gr.Slider(0.05, 2.0, d["temperature"], step=0.01, label="Temperature")
        negative = gr.Textbox("", label="Negative prompt", lines=1, placeholder="Text-to-image models: what to avoid")
    return Sampling(classes, seed, randomize, cfg, top_k, top_p, temperature, prompt, negative)


def run_buttons(label: str) -> tuple[gr.Button, gr.Button]:
    with gr.Row(elem_classes="run-row"):
        run = gr.Button(label, variant="primary", scale=3)
        stop = gr.Button("Cancel", variant="stop", scale=1)
    return run, stop


def results_panel(cb: Callbacks, label: str, send: bool = True) -> Results:
    gallery = gr.Gallery(label=label, columns=2, height=420, object_fit="contain", format="png",
                         elem_classes="result-gallery", buttons=["download", "fullscreen"], interactive=False)
    files = gr.File(label="PNG with its workflow (replay: arnodes run file.png, or drop on ComfyUI)",
                    file_count="multiple", interactive=False, height=140)
    selected = gr.State(0)
    gallery.select(cb.selected, None, selected, api_name=False, **LIGHT)
    buttons: dict[str, gr.Button] = {}
    if send:
        with gr.Row(elem_classes="send-row"):
            for text, tab in SEND_TARGETS:
                buttons[tab] = gr.Button(f"→ {text}", size="sm", variant="secondary")
    return Results(gallery, files, selected, buttons)


def image_input(label: str) -> gr.Image:
    return gr.Image(label=label, type="pil", image_mode="RGB", sources=["upload", "clipboard"], height=320)


def mask_editor() -> gr.ImageEditor:
    return gr.ImageEditor(label="Image — paint what should change", type="pil", image_mode="RGBA",
                          sources=["upload", "clipboard"], layers=False, transforms=(), height=420,
                          canvas_size=(512, 512), fixed_canvas=True,
                          brush=gr.Brush(colors=["#ffffff"], default_size=28, color_mode="fixed"),
                          eraser=gr.Eraser(default_size=28))


def build_app(runner: Any) -> gr.Blocks:
    """The whole page for `runner` (a WorkflowRunner, or a mock in tests)."""
    cb = Callbacks(runner)
    device_slots = {"concurrency_id": "device", "concurrency_limit": presets.CONCURRENT_RUNS}  # read at build: tests shrink it
    model_names = runner.model_choices()
    default_model = runner.default_model()
    choices = runner.class_choices(default_model)
    with gr.Blocks(title="arnodes studio") as demo:
        with gr.Row(elem_id="header", equal_height=True):
            gr.Markdown("# arnodes studio\nAutoregressive image generation — generate, inpaint, outpaint, edit "
                        "and upscale, each as a node graph you can download and replay.", scale=4)
            model = gr.Dropdown(model_names, value=default_model, label="Model", scale=1, min_width=220,
                                allow_custom_value=True)
            style = gr.Dropdown(runner.style_choices(), value="any", label="Style", scale=1, min_width=160,
                                info="Drawing style (models trained on several emoji sets); any = the seed picks")
        with gr.Accordion("Engine: precision, quantization, device, decoding", open=False):
            with gr.Row():
                run_dtype = gr.Dropdown(list(DTYPES), value="float32", label="Precision",
                                        info="Generator weights and activations; bfloat16 also decodes in bfloat16 (tokenizer weights stay float32)")
                run_quant = gr.Dropdown(list(QUANTS), value="none", label="Quantization",
                                        info="Weight-only int8 / int4 (gN: group size)")
                run_device = gr.Dropdown(list(DEVICES), value="auto", label="Device",
                                         info="auto = cuda when available, else cpu")
                run_decode = gr.Dropdown(list(DECODE_STRATEGIES), value="plain", label="Decoding",
                                         info="Raster models: sjd / gsd draft several tokens per step")
            with gr.Row():
                run_window = gr.Number(0, precision=0, minimum=0, maximum=1024, label="Draft window",
                                       info="sjd / gsd: drafts verified per forward; 0 = one grid row")
                run_init = gr.Dropdown(list(DRAFT_INITS), value="auto", label="Drafts",
                                       info="sjd / gsd: auto = the model's draft store if it ships one, else the "
                                            "token one row up")
                run_mass = gr.Slider(0.0, 0.99, value=GSD_GROUP_MASS, step=0.05, label="Group mass",
                                     info="gsd only: accept drafts among the most probable tokens (0 = exact)")
        with gr.Tabs() as tabs:
            with gr.Tab("Generate", id="generate"):
                gr.Markdown(presets.TIPS["generate"], elem_classes="tip")
                with gr.Row():
                    with gr.Column(scale=2, min_width=300):
                        gen = sampling_controls(choices, "Classes")
                        batch = gr.Slider(1, presets.MAX_BATCH, presets.SAMPLER_DEFAULTS["batch"], step=1,
                                          label="Images per class")
                        gen_run, gen_stop = run_buttons("Generate")
                        gr.Examples(presets.example_classes(choices), [gen.classes], label="Try")
                    with gr.Column(scale=3):
                        gen_out = results_panel(cb, "Generated")

            with gr.Tab("Inpaint / Outpaint", id="inpaint"):
                gr.Markdown(presets.TIPS["inpaint"] + " " + presets.TIPS["outpaint"], elem_classes="tip")
                with gr.Row():
                    with gr.Column(scale=3, min_width=320):
                        editor = mask_editor()
                        inp = sampling_controls(choices, "Fill with")
                        inp_run, inp_stop = run_buttons("Inpaint")
                        with gr.Accordion("Outpaint: extend the canvas", open=False):
                            with gr.Row():
                                pad = {side: gr.Slider(0, 128, 16 if side == "right" else 0, step=1,
                                                       label=f"{side} (px)") for side in ("left", "right")}
                            with gr.Row():
                                pad |= {side: gr.Slider(0, 128, 0, step=1, label=f"{side} (px)")
                                        for side in ("top", "bottom")}
                            feather = gr.Slider(0, 64, 8, step=1, label="Feathering (px)",
                                                info="Soft blend band along the old edge")
                            out_run, out_stop = run_buttons("Outpaint")
                    with gr.Column(scale=3):
                        inp_out = results_panel(cb, "Result")

            with gr.Tab("Edit", id="edit"):
                gr.Markdown(presets.TIPS["edit"], elem_classes="tip")
                with gr.Row():
                    with gr.Column(scale=3, min_width=320):
                        edit_image = image_input("Image")
                        with gr.Row():
                            box = {side: gr.Slider(0, 100, v, step=1, label=f"{side} %")
                                   for side, v in (("left", 25), ("top", 25), ("right", 75), ("bottom", 75))}
                        invert = gr.Checkbox(False, label="Change everything outside the box instead")
                        ed = sampling_controls(choices, "Turn the region into")
                        ed_run, ed_stop = run_buttons("Edit")
                    with gr.Column(scale=3):
                        ed_out = results_panel(cb, "Edited")

            with gr.Tab("Super-resolve", id="superres"):
                gr.Markdown(presets.TIPS["superres"], elem_classes="tip")
                with gr.Row():
                    with gr.Column(scale=3, min_width=320):
                        sr_image = image_input("Low-resolution image")
                        scale = gr.Radio([2, 4], value=2, label="Scale")
                        sr = sampling_controls(choices, "Class of the picture")
                        sr_run, sr_stop = run_buttons("Upscale")
                    with gr.Column(scale=3):
                        sr_out = results_panel(cb, "Upscaled")

            with gr.Tab("Control / Variation", id="control"):
                gr.Markdown(presets.TIPS["control"], elem_classes="tip")
                with gr.Row():
                    with gr.Column(scale=3, min_width=320):
                        ctl_image = image_input("Control / source image")
                        with gr.Row():
                            control_type = gr.Dropdown(list(CONTROL_TYPES), value="canny", label="Control map",
                                                       info="canny: the picture's edges; none: it is the map")
                            control_strength = gr.Slider(0, 2, 1.0, step=0.05, label="Control strength",
                                                         info="0 = ignore the map, 1 = as trained")
                        strength = gr.Slider(0, 1, 0.5, step=0.05, label="Variation strength",
                                             info="How much of the picture is redrawn")
                        ctl = sampling_controls(choices, "Class")
                        with gr.Row(elem_classes="run-row"):
                            ctl_run = gr.Button("Follow structure", variant="primary", scale=2)
                            var_run = gr.Button("Variation", variant="primary", scale=2)
                            ctl_stop = gr.Button("Cancel", variant="stop", scale=1)
                    with gr.Column(scale=3):
                        ctl_out = results_panel(cb, "Result")

            with gr.Tab("Workflow", id="workflow"):
                gr.Markdown(presets.TIPS["workflow"], elem_classes="tip")
                with gr.Row():
                    with gr.Column(scale=3, min_width=320):
                        wf_file = gr.File(label="Workflow (.json or .png)", file_types=[".json", ".png"],
                                          type="filepath", height=140)
                        wf_inputs = gr.File(label="Images the workflow loads (LoadImage names)",
                                            file_count="multiple", type="filepath", height=110)
                        if presets.example_workflows():
                            gr.Examples(presets.example_workflows(), [wf_file], label="Example workflows")
                        wf_table = gr.Dataframe(headers=["node", "class", "input", "value"], type="array",
                                                interactive=True, wrap=True, label="Values (edit the last column)")
                        wf_run, wf_stop = run_buttons("Run workflow")
                        wf_summary = gr.Markdown()
                    with gr.Column(scale=3):
                        wf_out = results_panel(cb, "Outputs", send=False)

            with gr.Tab("Models", id="models"):
                gr.Markdown(presets.TIPS["models"], elem_classes="tip")
                models_df = gr.Dataframe(headers=["model", "family", "source", "present", "loaded as", "memory MB"],
                                         interactive=False, label="Known models")
                with gr.Row():
                    pick = gr.Dropdown([r["name"] for r in runner.models()], value=default_model, label="Model",
                                       allow_custom_value=True, scale=2)
                    dtype = gr.Dropdown(list(DTYPES), value="float32", label="Precision")
                    quant = gr.Dropdown(list(QUANTS), value="none",
                                        label="Quantization")
                    device = gr.Dropdown(list(DEVICES), value="auto", label="Device")
                with gr.Row():
                    load_btn = gr.Button("Load", variant="primary")
                    unload_btn = gr.Button("Unload")
                    refresh_btn = gr.Button("Refresh")

        # ---- wiring: tasks ----
        outs = lambda r, s: [r.gallery, r.files, s.seed]  # noqa: E731
        engine = [run_dtype, run_quant, run_device]
        drafting = [run_window, run_init, run_mass]  # after the prompts: the callbacks take them last
        _jobs = {
            "generate": gen_run.click(cb.generate, [model, gen.classes, *gen.after_classes, batch, style, *engine,
                                                    run_decode, *gen.prompts, *drafting],
                                      outs(gen_out, gen), api_name="generate", **device_slots),
            "inpaint": inp_run.click(cb.inpaint, [model, editor, inp.classes, *inp.after_classes, style, *engine,
                                                  run_decode, *inp.prompts, *drafting],
                                     outs(inp_out, inp), api_name="inpaint", **device_slots),
            "outpaint": out_run.click(cb.outpaint, [model, editor, inp.classes, pad["left"], pad["top"], pad["right"],
                                                    pad["bottom"], feather, *inp.after_classes, style, *engine,
                                                    run_decode, *inp.prompts, *drafting],
                                      outs(inp_out, inp), api_name="outpaint", **device_slots),
            "edit": ed_run.click(cb.edit, [model, edit_image, ed.classes, box["left"], box["top"], box["right"],
                                           box["bottom"], invert, *ed.after_classes, style, *engine, *ed.prompts],
                                 outs(ed_out, ed), api_name="edit", **device_slots),
            "superres": sr_run.click(cb.super_resolve, [model, sr_image, sr.classes, scale, *sr.after_classes, style,
                                                        *engine, *sr.prompts],
                                     outs(sr_out, sr), api_name="super_resolve", **device_slots),
            "control": ctl_run.click(cb.control, [model, ctl_image, ctl.classes, control_type, control_strength,
                                                  *ctl.after_classes, style, *engine, *ctl.prompts],
                                     outs(ctl_out, ctl), api_name="control", **device_slots),
            "variation": var_run.click(cb.variation,
                                       [model, ctl_image, ctl.classes, strength, *ctl.after_classes, style, *engine,
                                        *ctl.prompts],
                                       outs(ctl_out, ctl), api_name="variation", **device_slots),
            "workflow": wf_run.click(cb.workflow_run, [wf_file, wf_table, wf_inputs], [wf_out.gallery, wf_out.files],
                                     api_name="workflow_run", **device_slots),
        }
        for i, (stop, names) in enumerate(((gen_stop, ["generate"]), (inp_stop, ["inpaint"]),
                                           (out_stop, ["outpaint"]), (ed_stop, ["edit"]), (sr_stop, ["superres"]),
                                           (ctl_stop, ["control", "variation"]), (wf_stop, ["workflow"]))):
            # outside the queue: a full queue must not stop a user from cancelling
            stop.click(cb.cancel, None, None, api_name="cancel" if i == 0 else False, queue=False, **LIGHT)

        # ---- wiring: chaining results into other tabs ----
        targets = {"inpaint": (editor, cb.send_to_editor), "edit": (edit_image, cb.send_to),
                   "superres": (sr_image, cb.send_to), "control": (ctl_image, cb.send_to)}
        for res in (gen_out, inp_out, ed_out, sr_out, ctl_out):
            for tab, button in res.send.items():
                component, fn = targets[tab]
                button.click(fn, [res.gallery, res.selected], component, api_name=False, **LIGHT).success(
                    lambda t=tab: gr.Tabs(selected=t), None, tabs, api_name=False, **LIGHT)

        # ---- wiring: workflow and models ----
        wf_file.upload(cb.workflow_load, wf_file, [wf_table, wf_summary], api_name="workflow_load", **LIGHT)
        wf_file.change(cb.workflow_load, wf_file, [wf_table, wf_summary], api_name=False, **LIGHT)
        pickers = [gen.classes, inp.classes, ed.classes, sr.classes, ctl.classes]
        for picker in pickers:
            model.change(cb.classes_for, model, picker, api_name=False, **LIGHT)
        load_btn.click(cb.model_load, [pick, dtype, quant, device], models_df, api_name="model_load", **device_slots)
        unload_btn.click(cb.model_unload, pick, models_df, api_name="model_unload", **LIGHT)
        refresh_btn.click(cb.models_table, None, models_df, api_name="models", **LIGHT)
        demo.load(cb.models_table, None, models_df, api_name=False, **LIGHT)
    demo.queue(default_concurrency_limit=1, max_size=presets.QUEUE_SIZE)
    return demo


def serve(demo: gr.Blocks, host: str = "127.0.0.1", port: int = 7860, share: bool = False,
          block: bool = True) -> gr.Blocks:
    """Start the server for an app built by `build_app` (block=False returns once it is up)."""
    demo.launch(server_name=host, server_port=port, share=share, prevent_thread_lock=not block, show_error=True,
                theme=theme(), css=CSS, ssr_mode=False, quiet=not block, footer_links=["api", "settings"])
    return demo


def launch(host: str = "127.0.0.1", port: int = 7860, share: bool = False) -> None:
    """`arnodes ui`: the real runner (default nodes, sandboxed folders), bound to 127.0.0.1 by default."""
    serve(build_app(WorkflowRunner()), host=host, port=port, share=share)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="arnodes web app")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--share", default="false", choices=["true", "false"])
    return p.parse_args(argv)


if __name__ == "__main__":
    args = parse_args()
    launch(host=args.host, port=args.port, share=args.share == "true")
