"""Performance figures in the READMEs come from the committed benchmark JSON; the GPU script cannot rot."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))
import report  # noqa: E402  (bench/ is scripts, not a package)


def test_readme_figures_match_the_committed_json():
    assert report.stale() == [], "run `python bench/report.py --write` after a benchmark run"


def test_every_block_is_rendered_in_the_readmes():
    readme = (BENCH.parent / "README.md").read_text()
    for name in ("generate", "gpu", "emoji", "quantize"):
        assert f"<!-- bench:{name} -->" in readme
    assert "<!-- bench:kernels -->" in (BENCH / "README.md").read_text()
    assert "<!-- bench:emoji-model -->" in (BENCH.parent / "weights" / "MODEL_CARD.md").read_text()


def test_a_changed_figure_is_caught(tmp_path):
    text = (BENCH.parent / "README.md").read_text()
    start = text.index("<!-- bench:generate -->\n") + len("<!-- bench:generate -->\n")
    tampered = text[:start] + "| VAR d16 | 1 | 0.1 s | 9.9 s | **99.00x** |\n" + text[start:]
    assert report.render(tampered) != tampered
    assert report.render(text) == text


def test_committed_results_name_their_machine():
    files = sorted((BENCH / "results").glob("*.json"))
    assert files, "no committed benchmark results"
    for path in files:
        data = json.loads(path.read_text())
        env = data.get("env") or {"torch": data.get("torch")}
        assert env.get("torch"), f"{path.name}: no torch version recorded"
        if "gpu" in path.name:
            assert env.get("gpu"), f"{path.name}: GPU figures must name the device"


def test_gpu_script_smoke_runs_the_same_code_paths_on_cpu(tmp_path, monkeypatch):
    proc = subprocess.run(["bash", str(BENCH / "gpu.sh"), str(tmp_path), "--smoke"], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((tmp_path / "gpu_smoke.json").read_text())
    ours = {(r["model"], r["quant"], r["batch"]) for r in data["rows"] if r["impl"] == "ours"}
    assert ours == {(m, q, b) for m in ("llamagen-tiny", "var-tiny") for q in ("none", "int8") for b in (1, 2)}
    for r in data["rows"]:
        assert r["seconds"] > 0 and r["weight_bytes"] > 0 and 0 < r["fraction_of_bound"]
    weights = {(r["model"], r["quant"], r["batch"]): r["weight_bytes"] for r in data["rows"]}
    for (model, quant, batch), nbytes in weights.items():  # the bound counts weights, not the batch's KV caches
        assert nbytes == weights[(model, quant, 1)], (model, quant, batch)
    assert all("src" in s["why"] for s in data["skipped"]) and len(data["skipped"]) == 4  # no official checkout
    assert data["bandwidth_bytes_per_s"] > 0 and data["env"]["device"] == "cpu"
    assert data["complete"]
    decode = json.loads((tmp_path / "decode_smoke.json").read_text())
    assert {r["decode"] for r in decode["rows"]} == {"plain", "sjd", "gsd"} and decode["env"]["device"] == "cpu"
    serving = json.loads((tmp_path / "gpu_serving_smoke.json").read_text())
    ev = serving["eviction"]
    sizes = [m["planned_bytes"] for m in ev["models"].values()]
    assert max(sizes) < ev["budget_bytes"] < sum(sizes)  # either model fits, both do not
    steps = ev["steps"]
    first, second = steps[0]["model"], steps[1]["model"]
    assert [s["model"] for s in steps] == [first, second, first, second] and first != second
    assert all(s["image_finite"] for s in steps[:3])
    for step, gone in zip(steps[1:3], (first, second)):  # each switch evicts the other model, nothing runs out
        assert [r["name"] for r in step["resident"]] == [step["model"]]
        assert any(gone in line for line in step["cache_log"]), step["cache_log"]
    assert "needs about" in steps[3]["refused"] and "budget" in steps[3]["refused"] and "image_finite" not in steps[3]
    batching = serving["batching"]
    assert [b["concurrent"] for b in batching["bursts"]] == [2, 4]
    formed = batching["bursts"][-1]["batches_formed"][0]
    assert sum(formed) == 4 and max(formed) >= 2  # runs at once went together (one batch of 4 on an idle machine)
    assert batching["identical_to_solo"] == {"checked": 4, "identical": 4, "max_pixel_diff": 0}
    monkeypatch.setattr(report, "load", lambda name: serving if name == "gpu_serving.json" else None)
    block = report.block_serving_gpu()  # what the README shows once a GPU run's JSON is committed
    assert block.count("| image |") == 3 and "refused: needs about" in block and "4 of 4 images identical" in block
    assert "largest difference" not in block
    batching["identical_to_solo"] = {"checked": 4, "identical": 3, "max_pixel_diff": 2}  # as a GPU might differ
    assert "3 of 4 images identical to the same seed run alone (largest difference 2/255" in report.block_serving_gpu()


def test_every_gpu_job_resolves_its_model_without_a_gpu():
    """The smoke run builds only tiny models: the real sizes' configs are checked here (a d30 job once
    stopped the whole GPU run with an unknown-config exit)."""
    import gpu_bench
    import var_generate
    jobs = gpu_bench.plan(smoke=False)
    assert {j.model for j in jobs} == {"llamagen-B", "llamagen-XL", "var-d16", "var-d30"}
    for job in jobs:
        family, size = job.model.split("-", 1)
        if family == "var":
            assert var_generate.configs(size)[1].depth == int(size[1:])
            assert gpu_bench.forward_passes(job) == 10  # the released models' 10 scales
        else:
            assert gpu_bench.forward_passes(job) == 256  # one per token at 256 px


def test_cpu_run_script_names_what_it_needs():
    proc = subprocess.run(["bash", str(BENCH / "run_cpu.sh")], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "VAR_CHECKOUT" in proc.stderr
