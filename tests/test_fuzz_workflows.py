"""Workflow fuzzer: hypothesis mutates the examples in workflows/ and runs each case the way
`arnodes run` does (read_workflow + Executor.run) on the bundled model.

Property: every case ends in a result or one of our typed user errors (never an internal error
or any other exception), within a time bound, and writes nothing outside the output folder.
At least ARNODES_FUZZ_EXAMPLES (default 2000) cases run; the fuzz profile caps sizes
(ARNODES_MAX_* below), so most cases are refusals or tiny runs. Cases are derandomized (the same
every run, no flaky CI); set ARNODES_FUZZ_SEED to explore other cases, and ARNODES_FUZZ_TRACE=FILE
to log each case with its time. Measured on the 2-core dev machine (shared): 2000 cases in 150 s.
"""
from __future__ import annotations

import collections
import json
import math
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from PIL import Image

from arnodes.engine.errors import ArnodesError
from arnodes.graph import Executor, LRUCache, read_workflow
from arnodes.graph.registry import default_registry

REPO = Path(__file__).resolve().parent.parent
BASES = {p.stem: json.loads(p.read_text()) for p in sorted((REPO / "workflows").glob("*.json"))}
EXAMPLES = int(os.environ.get("ARNODES_FUZZ_EXAMPLES", "2000"))
# A case running longer counts as a hang: generous, because a loaded 2-core CI box can make one tiny
# super-resolve take 30 s; an infinite loop still fails.
CASE_SECONDS = float(os.environ.get("ARNODES_FUZZ_CASE_SECONDS", "180"))
FUZZ_LIMITS = {"ARNODES_MAX_BATCH": "4", "ARNODES_MAX_SIDE": "1024", "ARNODES_MAX_PIXELS": str(256 * 256),
               "ARNODES_MAX_NODES": "64", "ARNODES_MAX_FRAMES": "2"}
INPUT_FILES = ["rgb.png", "g16.png", "anim.gif", "text.png", "float.tiff", "sub/inner.png"]

NASTY = [0, 1, -1, 7, 42, 2 ** 31, 2 ** 63, -2 ** 63, 2 ** 64 + 1, 10 ** 30, 0.0, -0.0, 0.5, 1.5, 31.0,
         math.nan, math.inf, -math.inf, 1e308, 5e-324, True, False, None, "", " ", "\x00", "a\ud800b", "\udc80",
         "../x", "../../etc/passwd", "/etc/passwd", "x" * 300, "é" * 200, "red heart;" * 5000, "red heart,  sun",
         "cuda", "cuda:7", "cpu", "auto", "bfloat16", "float16", "int8", "int4-g32", "int4-g128", "none", "lanczos",
         "center", "emoji-var", "var-d16", "tiny.json", "linear", "constant", "red", "alpha", "sub/dir/name",
         "line\nbreak", "🐱", "ЖЖЖ", "CON", ".", "..", "output", *INPUT_FILES, "missing.png"]


def deep(depth: int) -> list:
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


def values(node_ids: list[str]) -> st.SearchStrategy:
    links = st.tuples(st.sampled_from(node_ids + ["999", "x"]), st.integers(-2, 4)).map(list)
    return st.one_of(
        st.sampled_from(NASTY), st.integers(), st.floats(), st.text(max_size=30), links,
        st.integers(0, 1200).map(deep), st.lists(st.integers(), max_size=3),
        st.dictionaries(st.text(max_size=4), st.integers(), max_size=2))


GOOD_STRINGS = {"classes": ["red heart", "sun; fire", "3", "cat face, pizza", "rainbow;"],
                "negative": ["", "sun", "fire"], "filename_prefix": ["a", "sub/b", "ü", "x y"]}


def valid_value(ispec) -> st.SearchStrategy:
    """A value the spec accepts, from a few per input: repeats hit the executor's cache, which keeps the
    fuzz profile fast (a continuous range would make almost every case a fresh generation)."""
    if ispec.type in ("INT", "FLOAT"):
        lo = ispec.min if ispec.min is not None else -5
        hi = ispec.max if ispec.max is not None else 5
        picks = {lo, hi, ispec.default if ispec.default is not None else lo}
        if ispec.type == "INT":
            picks.add(min(int(lo) + 1, int(hi)))
        else:
            picks.add((lo + hi) / 2)
        return st.sampled_from(sorted(picks))
    if ispec.type == "BOOLEAN":
        return st.booleans()
    if ispec.type == "COMBO" and ispec.choices is not None:
        return st.sampled_from(ispec.choice_list())
    return st.sampled_from(GOOD_STRINGS.get(ispec.name, ["red heart", "a"]))


@st.composite
def cases(draw) -> object:
    """One workflow (dict, JSON text or bytes, or garbage) derived from an example by 1-4 mutations."""
    wf = json.loads(json.dumps(BASES[draw(st.sampled_from(sorted(BASES)))]))
    registry = default_registry()
    for _ in range(draw(st.integers(0, 3))):
        ids = sorted(wf) or ["1"]
        op = draw(st.sampled_from(["valid", "valid", "valid", "valid", "set", "set", "drop_input", "drop_node",
                                   "retype", "cycle", "chain", "load", "extra_input"]))
        node = wf.get(draw(st.sampled_from(ids)))
        spec = registry.get(node["class_type"]) if node else None
        if op == "valid" and spec:
            widgets = [i for i in spec.SPEC.inputs if i.is_widget]
            if widgets:
                ispec = draw(st.sampled_from(widgets))
                node["inputs"][ispec.name] = draw(valid_value(ispec))
        elif op == "set" and node:
            names = sorted(node["inputs"]) + ([i.name for i in spec.SPEC.inputs] if spec else [])
            node["inputs"][draw(st.sampled_from(names or ["x"]))] = draw(values(ids))
        elif op == "drop_input" and node and node["inputs"]:
            del node["inputs"][draw(st.sampled_from(sorted(node["inputs"])))]
        elif op == "drop_node" and node:
            del wf[draw(st.sampled_from(ids))]
        elif op == "retype" and node:
            node["class_type"] = draw(st.one_of(st.sampled_from(sorted(registry)), st.text(max_size=8)))
        elif op == "cycle" and len(ids) > 1:
            a, b = draw(st.sampled_from(ids)), draw(st.sampled_from(ids))
            for x, y in ((a, b), (b, a)):
                if wf[x]["inputs"]:
                    wf[x]["inputs"][draw(st.sampled_from(sorted(wf[x]["inputs"])))] = [y, 0]
        elif op == "chain":  # a deep graph: ImageScale after ImageScale, from any node's first output
            src = draw(st.sampled_from(ids))
            for k in range(draw(st.integers(1, 80))):
                wf[f"c{k}"] = {"class_type": "ImageScale", "inputs": {
                    "image": [src, 0], "upscale_method": draw(st.sampled_from(["nearest-exact", "area", "lanczos"])),
                    "width": draw(st.sampled_from([0, 1, 16, 64, 8192])), "height": draw(st.sampled_from([0, 3, 48])),
                    "crop": draw(st.sampled_from(["disabled", "center"]))}}
                src = f"c{k}"
            wf["cs"] = {"class_type": "SaveImage", "inputs": {"images": [src, 0], "filename_prefix": "chain"}}
        elif op == "load":
            wf["ld"] = {"class_type": draw(st.sampled_from(["LoadImage", "LoadImageMask"])),
                        "inputs": {"image": draw(st.sampled_from(NASTY)), "channel": "red"}}
            if wf["ld"]["class_type"] == "LoadImage":
                wf["ls"] = {"class_type": "SaveImage", "inputs": {"images": ["ld", 0], "filename_prefix": "ld"}}
        elif op == "extra_input" and node:
            node["inputs"][draw(st.text(min_size=1, max_size=8))] = draw(values(ids))
    form = draw(st.sampled_from(["dict", "dict", "dict", "dict", "text", "bytes", "garbage", "ui"]))
    if form == "text":
        return json.dumps(wf)
    if form == "bytes":
        return json.dumps(wf).encode("utf-8", "surrogatepass")
    if form == "garbage":
        return draw(st.one_of(st.sampled_from(NASTY), st.lists(st.integers(), max_size=3)).filter(
            lambda v: not isinstance(v, str)))
    if form == "ui":
        rows = st.lists(st.one_of(st.lists(values(["1", "2"]), min_size=5, max_size=6), values(["1"])), max_size=3)
        nodes = [{"id": k, "type": draw(st.one_of(st.sampled_from(sorted(registry)), values(["1"]))),
                  "inputs": draw(st.one_of(st.just([]), st.lists(st.fixed_dictionaries(
                      {"name": st.sampled_from(["model", "images", "x"]), "link": values(["1"])}), max_size=2))),
                  "widgets_values": draw(st.one_of(st.lists(values(["1"]), max_size=6), values(["1"]))),
                  "mode": draw(st.sampled_from([0, 2, 4, "x"]))} for k in range(draw(st.integers(0, 3)))]
        return {"nodes": nodes, "links": draw(rows)}
    return wf


def _prepare_inputs(folder: Path) -> None:
    (folder / "sub").mkdir(parents=True)
    rgb = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(folder / "rgb.png")
    Image.fromarray(rgb).save(folder / "sub" / "inner.png")
    Image.fromarray((np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)).save(folder / "g16.png")
    frames = [Image.new("RGB", (32, 32), (i * 80, 0, 0)) for i in range(3)]
    frames[0].save(folder / "anim.gif", save_all=True, append_images=frames[1:])
    Image.fromarray(np.linspace(0, 1, 256, dtype=np.float32).reshape(16, 16), mode="F").save(folder / "float.tiff")
    (folder / "text.png").write_text("not an image")


def _listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def _alarm(signum, frame):
    raise TimeoutError(f"a fuzz case ran past {CASE_SECONDS} s")


@pytest.mark.slow
@pytest.mark.skipif(not (REPO / "weights" / "emoji.json").is_file(), reason="bundled model missing")
def test_fuzzed_workflows_end_in_a_result_or_a_user_error(tmp_path, monkeypatch):
    for key, value in FUZZ_LIMITS.items():
        monkeypatch.setenv(key, value)
    root = tmp_path / "sandbox"
    inp, out, cwd = root / "input", root / "output", root / "cwd"
    _prepare_inputs(inp)
    out.mkdir()
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    inputs_before = _listing(inp)
    registry = default_registry()
    executor = Executor(registry, LRUCache(256))
    outcomes: collections.Counter = collections.Counter()
    slowest = [0.0, None]
    old_handler = signal.signal(signal.SIGALRM, _alarm)

    def one(source) -> None:
        started = time.perf_counter()
        signal.setitimer(signal.ITIMER_REAL, CASE_SECONDS)
        try:
            loaded = read_workflow(source, registry)
            executor.run(loaded.prompt, input_dir=inp, output_dir=out, extra_pnginfo=loaded.extra_pnginfo)
            outcomes["result"] += 1
        except ArnodesError as e:
            assert not isinstance(getattr(e, "original", None), TimeoutError), f"hang: {source!r:.2000}"
            assert not getattr(e, "internal", False), f"internal error reported for {source!r:.2000}: {e}"
            outcomes[type(e).__name__ + ("/" + type(e.original).__name__ if hasattr(e, "original") else "")] += 1
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        took = time.perf_counter() - started
        if took > slowest[0]:
            slowest[:] = [took, repr(source)[:300]]
        if os.environ.get("ARNODES_FUZZ_TRACE"):
            shown = "bytes" if isinstance(source, bytes) else json.dumps(source, default=repr)[:3000]
            with open(os.environ["ARNODES_FUZZ_TRACE"], "a") as fh:
                fh.write(f"{took:.3f}\t{shown}\n")
        assert sorted(os.listdir(root)) == ["cwd", "input", "output"], "a file was written outside the output folder"
        assert not os.listdir(cwd), "a file was written in the working directory"
        assert _listing(inp) == inputs_before, "the input folder changed"

    check = settings(max_examples=EXAMPLES, deadline=None, database=None,
                     derandomize="ARNODES_FUZZ_SEED" not in os.environ,
                     suppress_health_check=list(HealthCheck))(given(cases())(one))
    if "ARNODES_FUZZ_SEED" in os.environ:
        check = seed(int(os.environ["ARNODES_FUZZ_SEED"]))(check)
    started = time.perf_counter()
    try:
        check()
    finally:
        signal.signal(signal.SIGALRM, old_handler)
    total = sum(outcomes.values())
    print(f"\nfuzz: {total} cases in {time.perf_counter() - started:.0f} s; slowest {slowest[0]:.1f} s; "
          f"outcomes {dict(outcomes.most_common())}")
    assert total >= EXAMPLES, f"only {total} cases ran"
    assert outcomes["result"] > 0.02 * total, "almost nothing ran end to end: the mutations are too destructive"
