"""The `arnodes` command line (DESIGN.md section 8).

Every command builds or loads a node graph and runs it through graph/, so the CLI,
the web UI and ComfyUI all execute the same nodes. Bad input exits with status 2
and one `error:` line (a traceback only with --debug); a bug of ours (any untyped
exception) exits with status 70 and says "internal error"; success prints the
paths written.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

from .engine.choices import CONTROL_TYPES, DECODE_STRATEGIES, DEVICES, DRAFT_INITS, DTYPES, GSD_GROUP_MASS, QUANTS
from .engine.errors import ArnodesError, InvalidInputError
from .graph.errors import NodeExecutionError
from .engine.registry import DEFAULT_MODEL, DEFAULT_TEXT_MODEL, control_preprocessor

EXIT_BAD_INPUT = 2
EXIT_INTERNAL = 70  # EX_SOFTWARE (sysexits.h): an internal software error


class Progress:
    """Per-node and per-step progress on stderr, only on a terminal."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.node = ""

    def __call__(self, event: Any) -> None:
        if not self.enabled:
            return
        if event.kind == "node_start":
            self.node = f"{event.node_id} {event.class_type}"
            self._line(f"[{self.node}]")
        elif event.kind == "progress" and event.total:
            done = int(24 * event.step / event.total)
            self._line(f"[{self.node}] {'#' * done}{'.' * (24 - done)} {event.step}/{event.total}")
        elif event.kind in ("node_done", "node_cached"):
            self._line(f"[{self.node or event.class_type}] {'cached' if event.kind == 'node_cached' else 'done'}\n")

    def _line(self, text: str) -> None:
        sys.stderr.write("\r\033[K" + text)
        sys.stderr.flush()


def _registry():
    from .graph.registry import default_registry
    return default_registry()


def _run_graph(workflow: dict, args: argparse.Namespace, input_dir: Path, output_dir: Path,
               extra_pnginfo: dict | None = None) -> list[Path]:
    from .graph import Executor
    output_dir.mkdir(parents=True, exist_ok=True)
    progress = Progress(enabled=sys.stderr.isatty() and not args.quiet)
    result = Executor(_registry()).run(workflow, input_dir=input_dir, output_dir=output_dir,
                                       extra_pnginfo=extra_pnginfo, on_event=progress)
    if getattr(args, "stats_json", None):
        _write_stats(Path(args.stats_json), [s for ui in result.ui.values() for s in ui.get("stats", [])])
    written = []
    for ui in result.ui.values():
        written += [output_dir / p for p in ui.get("images", [])]
    return written


def _write_stats(path: Path, stats: list[dict]) -> None:
    """One generation's counts as JSON (several generate nodes: their sums, and each under "nodes")."""
    if not stats:
        raise InvalidInputError("--stats-json: the workflow ran no generate node")
    summary = dict(stats[0]) if len(stats) == 1 else {
        "forwards": sum(s["forwards"] for s in stats), "seconds": sum(s["seconds"] for s in stats), "nodes": stats}
    try:
        path.write_text(json.dumps(summary, indent=2) + "\n")
    except OSError as e:
        raise InvalidInputError(f"--stats-json {str(path)!r}: cannot write ({e.strerror})") from e


def cmd_run(args: argparse.Namespace) -> list[Path]:
    from .graph import apply_overrides, read_workflow
    registry = _registry()
    loaded = read_workflow(Path(args.workflow), registry)
    workflow = apply_overrides(loaded.prompt, args.set or [], registry)
    return _run_graph(workflow, args, Path(args.input_dir), Path(args.output_dir), loaded.extra_pnginfo)


def _apply_model_defaults(args: argparse.Namespace) -> None:
    """Unset sampling flags take the model's recommended values (its manifest / registry entry)."""
    from .engine.registry import model_defaults
    fallback = {"cfg": 4.0, "top_k": 0, "top_p": 1.0, "temperature": 1.0}
    recommended = {**fallback, **model_defaults(args.model)}
    for key in fallback:
        if getattr(args, key) is None:
            value = recommended[key]
            if key == "top_p" and not 0 < value < 1:
                value = 1.0  # 0 and 1 both mean "off"; the node's widget expects 1.0
            setattr(args, key, type(fallback[key])(value))


def _common_nodes(g, args: argparse.Namespace):
    """The model loader and the condition: ARTextCondition for --prompt, ARClassCondition for --class."""
    if args.model is None:  # a prompt without a model: the bundled text model; a class: the bundled class model
        args.model = DEFAULT_TEXT_MODEL if args.prompt is not None else DEFAULT_MODEL
    _apply_model_defaults(args)
    model = g.node("ARModelLoader", model=args.model, dtype=args.dtype, quant=args.quant, device=args.device)
    if args.prompt is not None:
        if args.style != "any":
            raise InvalidInputError("--style is for class-conditional models; with --prompt, say the style in words")
        cond = g.node("ARTextCondition", model=model.out(0), prompt=args.prompt, cfg=args.cfg,
                      negative=args.negative or "", cfg_interval=-1)
    else:
        cond = g.node("ARClassCondition", model=model.out(0), classes=args.class_name, cfg=args.cfg,
                      cfg_schedule="linear", negative=args.negative or "", style=args.style)
    return model, cond


def _sampler(args: argparse.Namespace) -> dict[str, Any]:
    return {"seed": args.seed, "top_k": args.top_k, "top_p": args.top_p, "temperature": args.temperature}


def _load_image_node(g, path: str):
    return g.node("LoadImage", image=Path(path).name)


def _finish(g, image_ref, args: argparse.Namespace, input_dir: Path) -> list[Path]:
    """Save through SaveImage (so the PNG embeds the workflow), then move to --out if given.

    With --out the graph saves into a private temporary folder next to the target, so the
    embedded prefix is the command's name (a replay writes `generate_NNNNN_.png`, never a
    hidden temporary name) and concurrent runs cannot take each other's files.
    """
    g.node("SaveImage", images=image_ref, filename_prefix=args.command)
    out = Path(args.out) if args.out else None
    if out is None:
        return _run_graph(g.build(), args, input_dir, Path(args.output_dir))
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".arnodes-", dir=out.parent))
    try:
        written = _run_graph(g.build(), args, input_dir, staging)
        final = []
        for i, path in enumerate(sorted(written)):
            target = out if i == 0 else out.with_name(f"{out.stem}_{i}{out.suffix}")
            os.replace(path, target)  # --out names the file: replacing it is what was asked
            final.append(target)
        return final
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _decoding(args: argparse.Namespace) -> dict[str, Any]:
    """The decode strategy and the knobs given for it (node inputs of ARGenerate)."""
    if args.group_mass is not None and args.decode != "gsd":
        raise InvalidInputError(f"--group-mass is a gsd setting; --decode is {args.decode!r}")
    if args.decode == "plain" and (args.draft_window is not None or args.draft_init is not None):
        raise InvalidInputError("--draft-window / --draft-init are sjd / gsd settings; --decode is 'plain'")
    knobs = {"draft_window": args.draft_window, "draft_init": args.draft_init, "group_mass": args.group_mass}
    return {"decode": args.decode, **{k: v for k, v in knobs.items() if v is not None}}


def cmd_generate(args: argparse.Namespace) -> list[Path]:
    from .graph import GraphBuilder
    g = GraphBuilder()
    model, cond = _common_nodes(g, args)
    tokens = g.node("ARGenerate", model=model.out(0), cond=cond.out(0), batch_size=args.batch,
                    more_smooth=False, **_decoding(args), **_sampler(args))
    image = g.node("ARDecode", model=model.out(0), tokens=tokens.out(0), scales=0)
    return _finish(g, image.out(0), args, Path(args.input_dir))


def _image_graph(args: argparse.Namespace):
    """(graph, model node, cond node, LoadImage node, image path) for a task on ``--image``."""
    from .graph import GraphBuilder
    image_path = Path(args.image)
    if not image_path.is_file():
        raise InvalidInputError(f"--image {args.image!r}: file not found")
    g = GraphBuilder()
    model, cond = _common_nodes(g, args)
    return g, model, cond, _load_image_node(g, args.image), image_path


def _image_task(args: argparse.Namespace, class_type: str, **extra: Any) -> list[Path]:
    g, model, cond, image, image_path = _image_graph(args)
    inputs = {"model": model.out(0), "cond": cond.out(0), "image": image.out(0), **_sampler(args), **extra}
    if getattr(args, "mask", None):
        mask_path = Path(args.mask)
        if mask_path.resolve().parent != image_path.resolve().parent:
            raise InvalidInputError("--mask must be in the same folder as --image")
        inputs["mask"] = g.node("LoadImageMask", image=mask_path.name, channel=args.mask_channel).out(0)
    node = g.node(class_type, **inputs)
    return _finish(g, node.out(0), args, image_path.resolve().parent)


def cmd_inpaint(args):
    return _image_task(args, "ARInpaint", keep_unmasked=True)


def cmd_edit(args):
    return _image_task(args, "AREdit")


def cmd_outpaint(args):
    return _image_task(args, "AROutpaint", left=args.left, top=args.top, right=args.right, bottom=args.bottom,
                       feathering=args.feather)


def cmd_upscale(args):
    return _image_task(args, "ARSuperResolve", scale=args.scale)


def cmd_control(args: argparse.Namespace) -> list[Path]:
    """The image is turned into the control map by ``--type`` (``none``: it already is one), then
    the model's control adapter draws the class along it."""
    g, model, cond, control_map, image_path = _image_graph(args)
    adapter = args.adapter or ("canny" if args.type == "none" else args.type)
    if args.type == "canny":
        trained = control_preprocessor(args.model, adapter)
        low = trained.low_threshold if args.low_threshold is None else args.low_threshold
        high = trained.high_threshold if args.high_threshold is None else args.high_threshold
        control_map = g.node("Canny", image=control_map.out(0), low_threshold=low, high_threshold=high)
    node = g.node("ARControl", model=model.out(0), cond=cond.out(0), control_image=control_map.out(0),
                  control_type=adapter, strength=args.strength, **_sampler(args))
    return _finish(g, node.out(0), args, image_path.resolve().parent)


def cmd_models(args: argparse.Namespace) -> list[Path]:
    from .engine.registry import REGISTRY, bundled_manifests, checkpoint_present, how_to_fetch
    from .engine.resolve import default_models_dir, hub_offline
    rows = []
    for name, path in bundled_manifests().items():
        manifest = json.loads(path.read_text())
        rows.append({"name": name, "family": manifest.get("family"), "source": "bundled",
                     "where": str(path), "present": True, "styles": manifest.get("styles", [])})
    models_dir = Path(args.models_dir) if args.models_dir else default_models_dir()
    for name, entry in REGISTRY.items():
        present = checkpoint_present(entry, models_dir)
        rows.append({"name": name, "family": entry.family, "source": entry.hf_repo,
                     "where": str(models_dir) if present else how_to_fetch(entry, models_dir),
                     "present": present})
    try:
        from .engine.model_cache import default_cache
        loaded = default_cache().info()
    except ImportError:
        loaded = []
    if args.json:
        print(json.dumps({"models": rows, "loaded": loaded, "offline": hub_offline()}, indent=2, default=str))
    else:
        for r in rows:
            styles = f"  styles: {', '.join(r['styles'])}" if r.get("styles") else ""
            print(f"{r['name']:<24} {r['family']:<9} {'present' if r['present'] else 'missing':<8} {r['where']}{styles}")
    return []


def cmd_nodes(args: argparse.Namespace) -> list[Path]:
    registry = _registry()
    specs = [registry[name].SPEC.to_dict() for name in sorted(registry)]
    if args.json:
        print(json.dumps(specs, indent=2, default=str))
    else:
        for s in specs:
            ins = ", ".join(f"{i['name']}:{i['type']}" for i in s["inputs"])
            outs = ", ".join(o["type"] for o in s["outputs"])
            print(f"{s['class_type']:<18} ({ins}) -> ({outs})")
    return []


def cmd_ui(args: argparse.Namespace) -> list[Path]:
    try:
        from .ui.app import launch
    except ImportError as e:
        raise InvalidInputError(f"the web UI needs the [ui] extra: pip install 'arnodes[ui]' ({e})") from e
    launch(host=args.host, port=args.port, share=args.share == "true")
    return []


def compile_flag(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--compile", choices=["auto", "on", "off"], default=None,
                    help="compile the decode step with torch.compile (auto = on CUDA only; default: "
                         "$ARNODES_COMPILE or auto); a failed compile falls back to eager")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="arnodes", description="Autoregressive image generation as node graphs.")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", required=True)

    def io(sp: argparse.ArgumentParser) -> None:
        compile_flag(sp)
        sp.add_argument("--input-dir", default="input", help="folder LoadImage reads from (sandboxed)")
        sp.add_argument("--output-dir", default="output", help="folder SaveImage writes to (sandboxed)")
        sp.add_argument("--quiet", action="store_true", help="no progress bar")

    r = sub.add_parser("run", help="run a workflow JSON, or a PNG that embeds one")
    r.add_argument("workflow")
    r.add_argument("--set", action="append", metavar="NODE_ID.INPUT=VALUE", help="override a widget value")
    io(r)
    r.set_defaults(func=cmd_run)

    def task(name: str, func, help_: str, image: bool = True) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_)
        sp.add_argument("--model", help=f"model name (default: {DEFAULT_MODEL} for --class, {DEFAULT_TEXT_MODEL} "
                                        f"for --prompt)")
        sp.add_argument("--quant", default="none", help=", ".join(QUANTS))
        sp.add_argument("--dtype", default="float32", choices=DTYPES)
        sp.add_argument("--device", default="auto", choices=DEVICES)
        what = sp.add_mutually_exclusive_group(required=True)
        what.add_argument("--class", dest="class_name", help="class name(s) or id(s), for class-conditional models")
        what.add_argument("--prompt", help="what to draw, in words, for text-to-image models")
        sp.add_argument("--negative", help="with --prompt: a prompt to guide away from (default: the model's empty "
                                           "caption); with --class: class(es) to guide away from")
        sp.add_argument("--style", default="any",
                        help="drawing style of models trained on several sets (`arnodes models` lists them); "
                             "'any' = the seed picks one")
        sp.add_argument("--seed", type=int, default=0)
        sp.add_argument("--cfg", type=float, help="guidance scale (default: the model's recommended value)")
        sp.add_argument("--top-k", type=int, help="0 = off (default: the model's recommended value)")
        sp.add_argument("--top-p", type=float, help="1 = off (default: the model's recommended value)")
        sp.add_argument("--temperature", type=float)
        sp.add_argument("--out", help="output PNG path (default: output/<command>_NNNNN_.png)")
        if image:
            sp.add_argument("--image", required=True, help="input image file")
        io(sp)
        sp.set_defaults(func=func)
        return sp

    gen = task("generate", cmd_generate, "generate images of a class or a prompt", image=False)
    gen.add_argument("--batch", type=int, default=1, help="images per class (or per prompt)")
    gen.add_argument("--decode", default="plain", choices=DECODE_STRATEGIES,
                     help="raster models: plain, sjd (speculative Jacobi, same distribution, fewer forwards), "
                          "gsd (grouped, fewest forwards, slightly lossy)")
    gen.add_argument("--draft-window", type=int, metavar="N",
                     help="sjd / gsd: drafts verified per forward (default: one grid row)")
    gen.add_argument("--draft-init", choices=DRAFT_INITS,
                     help="sjd / gsd: where drafts come from (default auto: the model's draft store when it ships "
                          "one, else the token one row up)")
    gen.add_argument("--group-mass", type=float, metavar="F",
                     help=f"gsd: accept a draft among the most probable tokens holding this much probability "
                          f"(default {GSD_GROUP_MASS}; 0 = exact)")
    gen.add_argument("--stats-json", metavar="FILE",
                     help="write {forwards, seconds, decode, tokens; for sjd / gsd: drafts, tokens_per_forward} of the "
                          "generation to FILE")
    for name, func, help_ in (("inpaint", cmd_inpaint, "regenerate the masked area"),
                              ("edit", cmd_edit, "regenerate a region as another class")):
        sp = task(name, func, help_)
        sp.add_argument("--mask", required=True, help="mask image (white = regenerate)")
        sp.add_argument("--mask-channel", default="red", choices=["alpha", "red", "green", "blue"])
    op = task("outpaint", cmd_outpaint, "extend the image")
    for side in ("left", "top", "right", "bottom"):
        op.add_argument(f"--{side}", type=int, default=0, help=f"pixels to add on the {side}")
    op.add_argument("--feather", type=int, default=4)
    up = task("upscale", cmd_upscale, "training-free super-resolution")
    up.add_argument("--scale", type=int, default=2)
    ct = task("control", cmd_control, "draw a class along the structure of an image (its edges)")
    ct.add_argument("--type", default="canny", choices=CONTROL_TYPES,
                    help="how the image becomes the control map: canny edges, or none (it already is the map)")
    ct.add_argument("--adapter", help="the model's control adapter to use (default: the one named by --type; "
                                      "with --type none, canny)")
    ct.add_argument("--strength", type=float, default=1.0, help="0 = uncontrolled, 1 = as trained (max 2)")
    ct.add_argument("--low-threshold", type=float, help="Canny: weak-edge threshold (default: the one the "
                    "model's adapter was trained with, else 0.4)")
    ct.add_argument("--high-threshold", type=float, help="Canny: strong-edge threshold (default: the adapter's, "
                    "else 0.8)")

    m = sub.add_parser("models", help="known models, where each resolves, whether it is present")
    m.add_argument("--json", action="store_true")
    m.add_argument("--models-dir")
    m.set_defaults(func=cmd_models)
    n = sub.add_parser("nodes", help="every node with its inputs, outputs and defaults")
    n.add_argument("--json", action="store_true")
    n.set_defaults(func=cmd_nodes)
    u = sub.add_parser("ui", help="serve the web app")
    u.add_argument("--host", default="127.0.0.1")
    u.add_argument("--port", type=int, default=7860)
    u.add_argument("--share", default="false", choices=["true", "false"])
    compile_flag(u)
    u.set_defaults(func=cmd_ui)
    return p


def _internal_error(exc: BaseException, debug: bool) -> int:
    """Our bug, not bad input: say so (never as "error:"), with the traceback under --debug."""
    import traceback

    where = ""
    original = exc
    if isinstance(exc, NodeExecutionError):
        where, original = f" in node {exc.node_id} ({exc.class_type})", exc.original
    summary = " ".join(f"{type(original).__name__}: {original}".split())[:500]
    if debug:
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    print(f"internal error{where}: {summary}", file=sys.stderr)
    print("this is a bug in arnodes, not a problem with your input; please report it"
          + ("" if debug else " with the traceback from --debug"), file=sys.stderr)
    return EXIT_INTERNAL


def main(argv: Sequence[str] | None = None) -> int:
    """Exit 0 on success, 2 on bad input ("error: ..."), 70 on an internal error, 130 on Ctrl-C."""
    args = build_parser().parse_args(argv)
    try:
        if getattr(args, "compile", None):
            from .engine.generate.compiled import set_default_mode
            set_default_mode(args.compile)
        for path in args.func(args):
            print(path)
        return 0
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except NodeExecutionError as e:
        if e.internal:
            return _internal_error(e, args.debug)
        return _user_error(e, args.debug)
    except (ArnodesError, FileNotFoundError) as e:
        return _user_error(e, args.debug)
    except Exception as e:  # noqa: BLE001 - anything untyped is our bug: reported as one, never as "error:"
        return _internal_error(e, args.debug)


def _user_error(exc: BaseException, debug: bool) -> int:
    if debug:
        raise exc
    message = " ".join(str(exc).split()) or type(exc).__name__
    print(f"error: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT
