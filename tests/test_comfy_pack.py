"""The repo as a ComfyUI custom-node pack: copied under another folder name and imported the way
ComfyUI's nodes.load_custom_node does it, in a fresh interpreter."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from test_workflows import TINY_VAR, tiny_models_dir

REPO = Path(__file__).resolve().parent.parent
SKIP_DIRS = {"tests", "training", "bench", "examples", "build", "dist", "__pycache__", "node_modules"}
CORE = {"LoadImage", "LoadImageMask", "SaveImage", "PreviewImage", "ImageScale"}

# Runs inside the subprocess; prints one JSON line. ComfyUI's modules are stubbed only for the run part.
SCRIPT = textwrap.dedent('''
    import importlib.util, json, math, os, sys, types
    pack_dir = sys.argv[1]
    name = os.path.basename(pack_dir)
    spec = importlib.util.spec_from_file_location(name, os.path.join(pack_dir, "__init__.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    report = {"torch_at_import": "torch" in sys.modules}
    M, D = module.NODE_CLASS_MAPPINGS, module.NODE_DISPLAY_NAME_MAPPINGS
    problems = []
    for key, cls in M.items():
        it = cls.INPUT_TYPES()
        if not isinstance(it, dict) or not isinstance(it.get("required"), dict):
            problems.append(f"{key}: INPUT_TYPES must return a dict with 'required'")
            continue
        for section in ("required", "optional"):
            for inp, entry in it.get(section, {}).items():
                ok = (isinstance(entry, tuple) and 1 <= len(entry) <= 2
                      and (isinstance(entry[0], str) or isinstance(entry[0], list))
                      and (len(entry) == 1 or isinstance(entry[1], dict)))
                if not ok:
                    problems.append(f"{key}.{inp}: bad INPUT_TYPES entry {entry!r}")
                elif isinstance(entry[0], list) and entry[1].get("default") not in entry[0]:
                    problems.append(f"{key}.{inp}: COMBO default not among the choices")
                elif entry[0] in ("INT", "FLOAT") and not entry[1]["min"] <= entry[1]["default"] <= entry[1]["max"]:
                    problems.append(f"{key}.{inp}: default outside [min, max]")
        if not isinstance(cls.RETURN_TYPES, tuple) or not all(isinstance(t, str) for t in cls.RETURN_TYPES):
            problems.append(f"{key}: RETURN_TYPES must be a tuple of str")
        if len(getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES)) != len(cls.RETURN_TYPES):
            problems.append(f"{key}: RETURN_NAMES length")
        if not callable(getattr(cls, cls.FUNCTION, None)):
            problems.append(f"{key}: FUNCTION {cls.FUNCTION!r} is not a method")
        if not isinstance(cls.CATEGORY, str) or not isinstance(getattr(cls, "OUTPUT_NODE", False), bool):
            problems.append(f"{key}: CATEGORY / OUTPUT_NODE")
        if not isinstance(D.get(key), str) or not D[key]:
            problems.append(f"{key}: no display name")
    report.update(problems=problems, names=sorted(M), categories=sorted({c.CATEGORY for c in M.values()}))
    # ComfyUI refuses an API prompt that lacks a required input (it fills in no defaults): every shipped
    # workflow must name all of them for the pack's nodes
    missing = []
    for wf_name in sorted(os.listdir(os.path.join(pack_dir, "workflows"))):
        with open(os.path.join(pack_dir, "workflows", wf_name)) as f:
            wf = json.load(f)
        for node_id, node in wf.items():
            if isinstance(node, dict) and node.get("class_type") in M:
                required = M[node["class_type"]].INPUT_TYPES()["required"]
                missing += [f"{wf_name} node {node_id} ({node['class_type']}): {k}" for k in required
                            if k not in node.get("inputs", {})]
    report["workflow_inputs_missing"] = missing
    import torch
    report["cuda_initialized"] = torch.cuda.is_initialized()
    cache_mod = sys.modules.get(name + ".engine.model_cache")
    report["models_loaded"] = [] if cache_mod is None or cache_mod._DEFAULT is None else cache_mod._DEFAULT.info()

    # ComfyUI's runtime modules, stubbed: progress bar, interrupt flag, folder paths, and a model
    # management that records what it is asked to load and moves models the way ComfyUI's does.
    steps, interrupt, announced = [], [False], []
    class ProgressBar:
        def __init__(self, total): self.total = total
        def update_absolute(self, value, total=None, preview=None):
            steps.append((value, total)); announced.append(sys.modules[name + ".engine.arrivals"].expected()[0])
    class Interrupted(Exception): pass
    def throw_exception_if_processing_interrupted():
        if interrupt[0]: raise Interrupted("interrupted")
    class ModelPatcher:
        def __init__(self, model, load_device, offload_device, size=0, weight_inplace_update=False):
            self.model, self.load_device, self.offload_device, self.size = model, load_device, offload_device, size
            self.model.device = offload_device
    comfy_device, loads, on_device = ["cpu"], [], []
    def load_models_gpu(models, memory_required=0, force_patch_weights=False, minimum_memory_required=None,
                        force_full_load=False):
        for m in models:
            loads.append({"size": m.size, "memory_required": memory_required, "full": force_full_load,
                          "device": str(m.load_device), "class": type(m.model).__name__})
            m.model.to(m.load_device); m.model.device = m.load_device
            if m not in on_device: on_device.append(m)
    def unload_all_models():
        for m in on_device:
            m.model.to(m.offload_device); m.model.device = m.offload_device
        on_device.clear()
    comfy = types.ModuleType("comfy"); utils = types.ModuleType("comfy.utils"); mm = types.ModuleType("comfy.model_management")
    patcher_mod = types.ModuleType("comfy.model_patcher"); patcher_mod.ModelPatcher = ModelPatcher
    utils.ProgressBar = ProgressBar; mm.throw_exception_if_processing_interrupted = throw_exception_if_processing_interrupted
    mm.get_torch_device = lambda: torch.device(comfy_device[0]); mm.unet_offload_device = lambda: torch.device("cpu")
    mm.load_models_gpu = load_models_gpu; mm.unload_all_models = unload_all_models
    fp = types.ModuleType("folder_paths"); fp.models_dir = sys.argv[3]
    fp.get_input_directory = lambda: sys.argv[4]; fp.get_output_directory = lambda: sys.argv[4]
    sys.modules.update({"comfy": comfy, "comfy.utils": utils, "comfy.model_management": mm,
                        "comfy.model_patcher": patcher_mod, "folder_paths": fp})

    def call(key, **kw):
        cls = M[key]
        return getattr(cls(), cls.FUNCTION)(**kw)
    (model,) = call("ARModelLoader", model=sys.argv[2], dtype="float32", quant="none", device="auto")
    report["auto_device"] = model.device  # ComfyUI started with --cpu: get_torch_device() is the CPU
    report["model_bytes"] = model.load().bundle.resident_bytes()  # the weights, before any generation
    (cond,) = call("ARClassCondition", model=model, classes="red heart", cfg=3, cfg_schedule="linear")
    common = dict(seed=3, top_k=0, top_p=1.0, temperature=1.0)
    generated = call("ARGenerate", model=model, cond=cond, batch_size=1, more_smooth=False, unique_id="7", **common)
    (tokens,) = generated["result"]  # ComfyUI's dict form: the node also reports its forward count under "ui"
    report.update(forwards=generated["ui"]["stats"][0]["forwards"], announced_in_generate=sorted(set(announced)))
    need_one = max(x["memory_required"] for x in loads)
    loads_before_unload = len(loads)
    unload_all_models()  # ComfyUI's "free memory" / unload button
    report["unloaded_from_device"] = not on_device
    (again,) = call("ARGenerate", model=model, cond=cond, batch_size=1, more_smooth=False, **common)["result"]
    report.update(reloaded=len(loads) > loads_before_unload, same_after_reload=bool(torch.equal(again.grids[-1], tokens.grids[-1])))
    loads_before_two = len(loads)
    call("ARGenerate", model=model, cond=cond, batch_size=2, more_smooth=False, **common)
    report.update(need_one=need_one, need_two=max(x["memory_required"] for x in loads[loads_before_two:]),
                  loads=loads[:2], size_after=model.load().patcher.size,
                  bytes_after=model.load().bundle.resident_bytes())
    (image,) = call("ARDecode", model=model, tokens=tokens, scales=0)
    (mask,) = call("ARRegionMask", image=image, left=0.25, top=0.25, right=0.75, bottom=0.75, invert=False)
    (out,) = call("ARInpaint", model=model, cond=cond, image=image, mask=mask, keep_unmasked=True, **common)
    keep = mask[0] == 0
    report.update(image=list(image.shape), out=list(out.shape), kept=bool(torch.equal(out[0][keep], image[0][keep])),
                  progress=steps[:3], progress_total=steps[-1][1] if steps else None)
    interrupt[0] = True
    try:
        call("ARGenerate", model=model, cond=cond, batch_size=1, more_smooth=False, **common)
        report["interrupt"] = "not honoured"
    except Interrupted:
        report["interrupt"] = "honoured"
    interrupt[0] = False
    report["announced_after_runs"] = sys.modules[name + ".engine.arrivals"].expected()[0]
    cache_mod = sys.modules.get(name + ".engine.model_cache")
    report["engine_cache_after_runs"] = [] if cache_mod._DEFAULT is None else cache_mod._DEFAULT.info()
    comfy_device[0] = "cuda:1"  # a GPU ComfyUI chose: "auto" follows it (nothing is moved until a node runs)
    report["auto_device_gpu"] = call("ARModelLoader", model=sys.argv[2], dtype="float32", quant="none", device="auto")[0].device
    del os.environ["ARNODES_MODELS_DIR"]  # inside ComfyUI, models live in ComfyUI's models folder
    try:
        call("ARModelLoader", model="var-d16", dtype="float32", quant="none", device="cpu")
        report["missing"] = "loaded?"
    except Exception as e:
        report["missing"] = str(e)
    print(json.dumps(report))
''')


# The pack's import and ComfyUI's stubbed runtime, as above, then an API-format workflow from the pack's
# workflows/ run node by node the way ComfyUI's executor does (inputs resolved from upstream outputs, then the
# hidden inputs written over them under the names the node declares: a hidden input named like a widget
# would replace the widget's value, which is how ARTextCondition once lost its prompt);
# the one core node, SaveImage, is replaced by reporting the images it would save.
IMPORT_PACK = SCRIPT[:SCRIPT.index('report = {"torch_at_import"')]
COMFY_STUBS = SCRIPT[SCRIPT.index("# ComfyUI's runtime modules, stubbed"):SCRIPT.index("def call(key, **kw):")]
RUN_WORKFLOW = IMPORT_PACK + "import torch\nM = module.NODE_CLASS_MAPPINGS\n" + COMFY_STUBS + textwrap.dedent('''
    with open(os.path.join(pack_dir, "workflows", sys.argv[2])) as f:
        wf = json.load(f)
    outputs, saved, pending = {}, {}, dict(wf)
    while pending:
        ready = [n for n, node in pending.items()
                 if not any(isinstance(v, list) and v[0] in pending for v in node["inputs"].values())]
        for node_id in ready:
            node = pending.pop(node_id)
            kw = {k: outputs[v[0]][v[1]] if isinstance(v, list) else v for k, v in node["inputs"].items()}
            if node["class_type"] in M:
                cls = M[node["class_type"]]
                hidden = cls.INPUT_TYPES().get("hidden", {})  # filled in after the widgets, as ComfyUI does
                kw.update({k: {"PROMPT": wf, "UNIQUE_ID": node_id, "EXTRA_PNGINFO": None}[v] for k, v in hidden.items()})
                res = getattr(cls(), cls.FUNCTION)(**kw)
                outputs[node_id] = res["result"] if isinstance(res, dict) else res
            else:
                saved[node_id] = kw["images"].tolist()
    print(json.dumps({"saved": saved}))
''')


def copy_pack(dest: Path) -> None:
    """The package files only: *.py plus the data dirs; no tests, no VCS, no caches."""
    for path in REPO.rglob("*"):
        rel = path.relative_to(REPO)
        if path.is_dir() or any(p in SKIP_DIRS or p.startswith(".") or p.endswith(".egg-info") for p in rel.parts):
            continue
        if path.suffix == ".py" or rel.parts[0] in ("workflows", "weights") or rel.parts[:2] == ("engine", "data"):
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, dest / rel)


@pytest.fixture(scope="module")
def pack_run(tmp_path_factory) -> tuple[Path, dict]:
    """The pack copied, imported and run once the way ComfyUI does it; (its folder, the script's report)."""
    root = tmp_path_factory.mktemp("comfy")
    pack = root / "custom_nodes" / "ComfyUI-arnodes"
    copy_pack(pack)
    io_dir = root / "io"
    io_dir.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(ARNODES_MODELS_DIR=str(tiny_models_dir()), HF_HUB_OFFLINE="1", HF_HOME=str(root / "hf"),
               HF_HUB_CACHE=str(root / "hf" / "hub"))
    proc = subprocess.run([sys.executable, "-I", "-c", SCRIPT, str(pack), TINY_VAR, str(root / "models"),
                           str(io_dir)], capture_output=True, text=True, timeout=240, cwd=str(root), env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return pack, json.loads(proc.stdout.strip().splitlines()[-1])


def test_pack_imports_and_runs_like_comfyui(pack_run):
    pack, report = pack_run
    assert (pack / "__init__.py").is_file() and not (pack / "tests").exists()
    assert report["problems"] == []
    assert report["workflow_inputs_missing"] == []
    assert not report["torch_at_import"], "importing the pack must stay light"
    assert not report["cuda_initialized"] and report["models_loaded"] == []
    assert set(report["names"]) >= {"ARModelLoader", "ARClassCondition", "ARTextCondition", "ARTokenize", "ARDecode",
                                    "ARGenerate", "ARInpaint", "AROutpaint", "AREdit", "ARSuperResolve", "ARControl",
                                    "ARVariation", "ARRegionMask"}
    assert not CORE & set(report["names"]) and all(n.startswith("AR") for n in report["names"])
    assert all(c.startswith("arnodes/") for c in report["categories"])
    assert report["image"] == [1, 64, 64, 3] and report["out"] == [1, 64, 64, 3] and report["kept"]
    assert report["forwards"] > 0
    # ComfyUI runs one node at a time: a generate node announces itself, so it does not wait out the
    # batching window for company that cannot come
    assert report["announced_in_generate"] == [1] and report["announced_after_runs"] == 0
    assert report["progress"] and report["progress_total"] > 0
    assert report["interrupt"] == "honoured"


def test_inside_comfyui_comfyui_manages_the_models_memory(pack_run):
    """The pack's models go through ComfyUI's model management (a fake one here, recording): loaded by
    load_models_gpu with the generation's working set, unloaded by its unload, on the device it chose
    ("auto" = ComfyUI's device, so --cpu holds), never in our own cache; a missing model names
    ComfyUI's models folder."""
    pack, report = pack_run
    first = report["loads"][0]
    assert first["class"] == "BundleModules" and first["full"] and first["device"] == "cpu"
    assert first["size"] == report["model_bytes"] > 0
    # the size ComfyUI sees follows what the bundle holds; on the CPU VAR gives its KV caches back after each image
    assert report["size_after"] == report["bytes_after"] == report["model_bytes"]
    assert report["need_one"] > 0 and report["need_two"] == 2 * report["need_one"]  # KV cache and activations
    assert report["unloaded_from_device"] and report["reloaded"] and report["same_after_reload"]
    assert report["engine_cache_after_runs"] == []
    assert report["auto_device"] == "cpu" and report["auto_device_gpu"] == "cuda:1"
    missing = report["missing"]
    assert "var" in missing and "not found" in missing and str(pack.parents[1] / "models" / "arnodes") in missing
    assert "--models-dir" not in missing


def test_inside_comfyui_the_models_folder_is_comfyuis(tmp_path, monkeypatch):
    """ComfyUI's models/arnodes is registered and becomes the folder the loader lists and reads
    (unless ARNODES_MODELS_DIR already names one)."""
    import types

    from arnodes.nodes import comfy_pack
    from arnodes.nodes.types import models_dir

    registered = []
    fake = types.ModuleType("folder_paths")
    fake.models_dir = str(tmp_path / "ComfyUI" / "models")
    fake.add_model_folder_path = lambda name, path, is_default=False: registered.append((name, path))
    monkeypatch.setitem(sys.modules, "folder_paths", fake)
    monkeypatch.setenv("ARNODES_MODELS_DIR", "")  # so that teardown restores the variable as it was
    monkeypatch.delenv("ARNODES_MODELS_DIR")
    comfy_pack.use_comfy_models_folder()
    want = tmp_path / "ComfyUI" / "models" / "arnodes"
    assert registered == [("arnodes", str(want))] and models_dir() == want
    monkeypatch.setenv("ARNODES_MODELS_DIR", str(tmp_path / "mine"))
    comfy_pack.use_comfy_models_folder()
    assert models_dir() == tmp_path / "mine"


def test_the_text_to_image_example_runs_in_the_pack_as_in_arnodes(tmp_path):
    """workflows/text_to_image.json, run by the pack's node classes in ComfyUI's way (bundled emoji-text,
    offline), saves the very pixels arnodes' own executor makes of it."""
    import numpy as np
    import torch

    from arnodes.graph import Executor
    from arnodes.graph.registry import default_registry

    pack = tmp_path / "custom_nodes" / "ComfyUI-arnodes"
    copy_pack(pack)
    (tmp_path / "io").mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(ARNODES_MODELS_DIR=str(tiny_models_dir()), HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    proc = subprocess.run([sys.executable, "-I", "-c", RUN_WORKFLOW, str(pack), "text_to_image.json",
                           str(tmp_path / "models"), str(tmp_path / "io")], capture_output=True, text=True,
                          timeout=240, cwd=str(tmp_path), env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    (comfy,) = json.loads(proc.stdout.strip().splitlines()[-1])["saved"].values()
    comfy = np.asarray(comfy, dtype=np.float32)
    workflow = json.loads((REPO / "workflows" / "text_to_image.json").read_text())
    result = Executor(default_registry()).run(workflow, input_dir=tmp_path / "io", output_dir=tmp_path / "ours")
    ours = result.outputs[workflow["5"]["inputs"]["images"][0]][0]
    assert comfy.shape == (1, 64, 64, 3) and comfy.std() > 0.02
    assert torch.equal(torch.from_numpy(comfy), ours.float())
