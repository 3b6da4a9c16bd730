"""The `arnodes` command line, run in-process on the tiny fixture models."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from arnodes.cli import main
from arnodes.engine.control import Preprocessor
from test_workflows import TINY_VAR, tiny_models_dir


@pytest.fixture()
def models_dir(monkeypatch):
    path = tiny_models_dir()
    monkeypatch.setenv("ARNODES_MODELS_DIR", str(path))
    return path


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_nodes_json_lists_every_node(capsys):
    code, out, _ = run_cli(capsys, "nodes", "--json")
    names = {n["class_type"] for n in json.loads(out)}
    assert code == 0
    assert {"ARModelLoader", "ARGenerate", "ARInpaint", "AROutpaint", "AREdit", "ARSuperResolve", "ARControl",
            "ARVariation", "ARTokenize", "ARDecode", "LoadImage", "SaveImage"} <= names


def test_generate_writes_png_with_workflow(capsys, models_dir, tmp_path):
    out = tmp_path / "img.png"
    code, stdout, err = run_cli(capsys, "generate", "--model", TINY_VAR, "--class", "1", "--seed", "3",
                                "--out", str(out), "--quiet")
    assert code == 0, err
    assert stdout.strip() == str(out)
    img = Image.open(out)
    assert img.size == (64, 64) and "prompt" in img.text
    assert not list(tmp_path.glob(".arnodes_tmp_*")), "temporary file left behind"
    # replay the embedded workflow: same seed, same device -> same pixels
    code, stdout, err = run_cli(capsys, "run", str(out), "--output-dir", str(tmp_path / "replay"), "--quiet")
    assert code == 0, err
    replayed = Image.open(stdout.strip().splitlines()[0])
    assert np.array_equal(np.asarray(replayed), np.asarray(Image.open(out)))


def test_set_override_changes_the_image(capsys, models_dir, tmp_path):
    out = tmp_path / "a.png"
    assert run_cli(capsys, "generate", "--model", TINY_VAR, "--class", "1", "--seed", "3", "--top-k", "20",
                   "--out", str(out), "--quiet")[0] == 0
    prompt = json.loads(Image.open(out).text["prompt"])
    gen_id = next(i for i, n in prompt.items() if n["class_type"] == "ARGenerate")
    code, stdout, err = run_cli(capsys, "run", str(out), "--set", f"{gen_id}.seed=99",
                                "--output-dir", str(tmp_path / "b"), "--quiet")
    assert code == 0, err
    other = np.asarray(Image.open(stdout.strip().splitlines()[0]))
    assert not np.array_equal(other, np.asarray(Image.open(out)))


@pytest.mark.parametrize("argv,needle", [
    (("generate", "--model", TINY_VAR, "--class", "no such class"), "no such class"),
    (("generate", "--model", "no-such-model", "--class", "1"), "no-such-model"),
    (("generate", "--model", TINY_VAR, "--class", "1", "--style", "comic"), "'comic'"),
    (("run", "missing.json"), "missing.json"),
    (("inpaint", "--model", TINY_VAR, "--class", "1", "--image", "nope.png", "--mask", "m.png"), "nope.png"),
])
def test_bad_input_exits_2_with_one_error_line(capsys, models_dir, tmp_path, argv, needle):
    code, out, err = run_cli(capsys, *argv, "--output-dir", str(tmp_path))
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], err
    assert not list(tmp_path.iterdir()), "nothing may be written on bad input"


def test_inpaint_shortcut_keeps_unmasked_pixels(capsys, models_dir, tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "in.png")
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 16:48] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    out = tmp_path / "out" / "fixed.png"
    out.parent.mkdir()
    code, _, err = run_cli(capsys, "inpaint", "--model", TINY_VAR, "--class", "2", "--image", str(tmp_path / "in.png"),
                           "--mask", str(tmp_path / "mask.png"), "--out", str(out), "--quiet")
    assert code == 0, err
    a, b = np.asarray(Image.open(tmp_path / "in.png")), np.asarray(Image.open(out))
    assert np.array_equal(a[:16], b[:16]) and not np.array_equal(a[16:48, 16:48], b[16:48, 16:48])


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_generate_in_half_precision_with_the_compile_switch(capsys, models_dir, tmp_path, dtype):
    from arnodes.engine.generate import compiled
    out = tmp_path / f"{dtype}.png"
    try:
        code, stdout, err = run_cli(capsys, "generate", "--model", TINY_VAR, "--class", "1", "--dtype", dtype,
                                    "--compile", "off", "--out", str(out), "--quiet")
        assert compiled.default_mode() == "off"
    finally:
        compiled.set_default_mode(None)
    assert code == 0, err
    assert Image.open(out).size == (64, 64)


def test_bad_compile_mode_from_the_environment_is_a_user_error(capsys, models_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("ARNODES_COMPILE", "sometimes")
    code, _, err = run_cli(capsys, "generate", "--model", TINY_VAR, "--class", "1", "--out",
                           str(tmp_path / "x.png"), "--quiet")
    assert code == 2 and err.startswith("error:") and "sometimes" in err


def test_generate_with_speculative_decoding_writes_stats(capsys, models_dir, tmp_path):
    from test_workflows import TINY_LLAMAGEN
    counts = {}
    for strategy in ("plain", "sjd"):
        stats = tmp_path / f"{strategy}.json"
        code, _, err = run_cli(capsys, "generate", "--model", TINY_LLAMAGEN, "--class", "1", "--decode", strategy,
                               "--stats-json", str(stats), "--out", str(tmp_path / f"{strategy}.png"), "--quiet")
        assert code == 0, err
        data = json.loads(stats.read_text())
        assert data["decode"] == strategy and data["seconds"] > 0 and data["tokens"] == 16
        counts[strategy] = data["forwards"]
    assert counts["plain"] == 16 and 1 < counts["sjd"] <= 16
    code, _, err = run_cli(capsys, "generate", "--model", TINY_VAR, "--class", "1", "--decode", "sjd",
                           "--out", str(tmp_path / "v.png"), "--quiet")
    assert code == 2 and "next-scale" in err


def test_draft_knobs_reach_the_decoder(capsys, models_dir, tmp_path):
    """--draft-window 1 verifies one draft per forward (a forward per token, as plain); --draft-init shows in
    the stats; knobs of another strategy are user errors naming the flag."""
    from test_workflows import TINY_LLAMAGEN
    stats = tmp_path / "s.json"
    base = ("generate", "--model", TINY_LLAMAGEN, "--class", "1", "--out", str(tmp_path / "x.png"), "--quiet",
            "--stats-json", str(stats))
    code, _, err = run_cli(capsys, *base, "--decode", "sjd", "--draft-window", "1", "--draft-init", "uniform")
    assert code == 0, err
    data = json.loads(stats.read_text())
    assert data["forwards"] == 16 and data["tokens_per_forward"] == {"1": 16} and data["drafts"] == "uniform"
    code, _, err = run_cli(capsys, *base, "--decode", "gsd", "--group-mass", "0.9")
    assert code == 0, err
    for extra, needle in ((("--decode", "sjd", "--group-mass", "0.5"), "--group-mass"),
                          (("--decode", "plain", "--draft-window", "4"), "--draft-window"),
                          (("--decode", "sjd", "--draft-init", "store"), "draft store"),
                          (("--decode", "sjd", "--draft-window", "2000"), "draft_window")):
        code, _, err = run_cli(capsys, *base, *extra)
        assert code == 2 and err.startswith("error:") and needle in err, (extra, err)


@pytest.mark.parametrize("control_type", ["canny", "none"])
def test_control_draws_along_the_map_and_replays(capsys, models_dir, tmp_path, control_type):
    pic = np.full((64, 64, 3), 255, np.uint8)
    pic[30:54, 8:32] = (200, 30, 30)
    Image.fromarray(pic).save(tmp_path / "pic.png")
    outs = {}
    for strength in ("1", "0"):
        out = tmp_path / f"s{strength}.png"
        code, _, err = run_cli(capsys, "control", "--model", TINY_VAR, "--class", "red heart", "--image",
                               str(tmp_path / "pic.png"), "--type", control_type, "--strength", strength,
                               "--seed", "4", "--out", str(out), "--quiet")
        assert code == 0, err
        outs[strength] = np.asarray(Image.open(out))
        prompt = json.loads(Image.open(out).text["prompt"])
        classes = {n["class_type"] for n in prompt.values()}
        assert ("Canny" in classes) == (control_type == "canny") and "ARControl" in classes
        if control_type == "canny":  # the thresholds the model's adapter names in its manifest
            canny = next(n["inputs"] for n in prompt.values() if n["class_type"] == "Canny")
            assert (canny["low_threshold"], canny["high_threshold"]) == (0.2, 0.5)
    code, _, err = run_cli(capsys, "generate", "--model", TINY_VAR, "--class", "red heart", "--seed", "4",
                           "--out", str(tmp_path / "plain.png"), "--quiet")
    assert code == 0, err
    assert np.array_equal(outs["0"], np.asarray(Image.open(tmp_path / "plain.png")))  # strength 0 = uncontrolled
    assert np.abs(outs["1"].astype(int) - outs["0"]).mean() > 3


def test_control_thresholds_given_override_the_adapters(capsys, models_dir, tmp_path):
    Image.fromarray(np.full((64, 64, 3), 255, np.uint8)).save(tmp_path / "pic.png")
    out = tmp_path / "o.png"
    code, _, err = run_cli(capsys, "control", "--model", TINY_VAR, "--class", "1", "--image", str(tmp_path / "pic.png"),
                           "--low-threshold", "0.1", "--out", str(out), "--quiet")
    assert code == 0, err
    prompt = json.loads(Image.open(out).text["prompt"])
    canny = next(n["inputs"] for n in prompt.values() if n["class_type"] == "Canny")
    assert (canny["low_threshold"], canny["high_threshold"]) == (0.1, 0.5)


def test_bundled_adapter_maps_use_its_training_thresholds():
    from arnodes.engine.registry import control_preprocessor
    assert control_preprocessor("emoji-var", "canny") == Preprocessor("canny", 0.15, 0.35)
    assert control_preprocessor("emoji-var", "depth") == Preprocessor("canny", 0.4, 0.8)  # ComfyUI's defaults
    assert control_preprocessor("no-such-model.json", "canny") == Preprocessor("canny", 0.4, 0.8)


def test_control_with_an_adapter_the_model_lacks_is_a_user_error(capsys, models_dir, tmp_path):
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "pic.png")
    code, _, err = run_cli(capsys, "control", "--model", TINY_VAR, "--class", "1", "--image", str(tmp_path / "pic.png"),
                           "--adapter", "depth", "--output-dir", str(tmp_path / "o"))
    assert code == 2 and err.startswith("error:") and "'depth' is not one of the allowed values: 'canny'" in err


def test_a_missing_model_file_says_where_to_put_it(capsys, tmp_path, monkeypatch):
    """The message names the folder looked in and ARNODES_MODELS_DIR (true in every front end), not a
    flag the generation commands do not have."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setenv("ARNODES_MODELS_DIR", str(tmp_path / "models"))
    code, _, err = run_cli(capsys, "generate", "--model", "var-d16", "--class", "goldfish",
                           "--output-dir", str(tmp_path / "out"), "--quiet")
    assert code == 2 and err.startswith("error:")
    assert "not on disk" in err and str(tmp_path / "models") in err and "ARNODES_MODELS_DIR" in err
    assert "huggingface.co/FoundationVision/var" in err and "--models-dir" not in err
