"""The launched web app, driven over HTTP with gradio_client: each tab's main endpoint returns a
correct image from a real model (the bundled one, else the tiny VAR fixture), bad input returns a
readable error, and a downloaded PNG replays its own workflow.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

gradio_client = pytest.importorskip("gradio_client", reason="the web-app tests need the [test] extra")
pytest.importorskip("gradio", reason="the web-app tests need the [ui] extra")

import ui_support  # noqa: E402  (tests/ is on sys.path, see tests/conftest.py)
from gradio_client import Client, handle_file  # noqa: E402


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from arnodes.ui.app import build_app
    from arnodes.ui.callbacks import WorkflowRunner

    root = tmp_path_factory.mktemp("ui_client")
    with pytest.MonkeyPatch.context() as mp:
        model, cls, size = ui_support.pick_model(root, mp)
        demo = build_app(WorkflowRunner(root / "work"))
        with ui_support.serving(demo) as url:
            client = Client(url, verbose=False, download_files=str(root / "downloads"))
            yield {"client": client, "model": model, "cls": cls, "size": size, "root": root}


EMPTY_TABLE = {"headers": ["node", "class", "input", "value"], "data": [], "metadata": None}


def sampler(seed: int = 3) -> dict:
    return {"seed": seed, "randomize": False, "cfg": 4.0, "top_k": 0, "top_p": 1.0, "temperature": 1.0}


def images_of(gallery: list) -> list[Image.Image]:
    return [Image.open(item["image"]).convert("RGB") for item in gallery]


def assert_real_image(img: Image.Image, size: tuple[int, int]) -> None:
    assert img.size == size
    arr = np.asarray(img, dtype=np.float32)
    assert arr.std() > 2.0, "image is blank (a single colour)"


def test_generate_returns_one_image_per_class_and_batch_slot(server):
    c = server["client"]
    gallery, files, seed = c.predict(server["model"], [server["cls"], "1"], batch=2, api_name="/generate",
                                     **sampler(5))
    assert seed == 5 and len(gallery) == 4 and len(files) == 4
    for img in images_of(gallery):
        assert_real_image(img, (server["size"], server["size"]))


def test_random_seed_is_reported_back(server):
    gallery, _, seed = server["client"].predict(server["model"], [server["cls"]], batch=1, api_name="/generate",
                                                **{**sampler(), "randomize": True})
    assert len(gallery) == 1 and isinstance(seed, int) and seed >= 0


def test_downloaded_png_embeds_a_workflow_that_replays_to_the_same_image(server):
    from arnodes.graph import read_workflow
    from arnodes.graph.registry import default_registry

    c = server["client"]
    gallery, files, _ = c.predict(server["model"], [server["cls"]], batch=1, api_name="/generate", **sampler(11))
    png = Path(files[0])
    prompt = read_workflow(png.read_bytes(), default_registry()).prompt
    classes = {n["class_type"] for n in prompt.values()}
    assert {"ARModelLoader", "ARClassCondition", "ARGenerate", "ARDecode", "SaveImage"} <= classes
    replay, replay_files = c.predict(handle_file(str(png)), EMPTY_TABLE, None, api_name="/workflow_run")
    assert len(replay) == 1
    assert np.array_equal(np.asarray(images_of(replay)[0]), np.asarray(Image.open(png).convert("RGB")))


def test_workflow_table_values_override_the_file(server):
    c = server["client"]
    _, files, _ = c.predict(server["model"], [server["cls"]], batch=1, api_name="/generate", **sampler(1))
    rows, summary = c.predict(handle_file(files[0]), api_name="/workflow_load")
    assert "ARGenerate" in summary
    rows = rows["data"] if isinstance(rows, dict) else rows
    batch_rows = [r for r in rows if r[2] == "batch_size"]
    assert batch_rows, rows
    batch_rows[0][3] = "3"
    table = {"headers": ["node", "class", "input", "value"], "data": rows, "metadata": None}
    out, _ = c.predict(handle_file(files[0]), table, None, api_name="/workflow_run")
    assert len(out) == 3


def test_inpaint_regenerates_the_painted_area_only(server, tmp_path):
    size = server["size"]
    src = ui_support.sample_image(tmp_path / "src.png", size)
    layer = ui_support.stroke_layer(tmp_path / "layer.png", size, (size // 4, size // 4, size // 2, size // 2))
    editor = {"background": handle_file(str(src)), "layers": [handle_file(str(layer))], "composite": None, "id": None}
    gallery, _, _ = server["client"].predict(server["model"], editor, [server["cls"]], api_name="/inpaint",
                                             **sampler())
    out = images_of(gallery)[0]
    assert_real_image(out, (size, size))
    before = np.asarray(Image.open(src).convert("RGB"), dtype=np.float32)
    after = np.asarray(out, dtype=np.float32)
    inside = np.abs(after - before)[size // 4:size // 2, size // 4:size // 2].mean()
    assert inside > 1.0, "the painted area was not regenerated"


def test_inpaint_without_a_painted_mask_is_a_readable_error(server, tmp_path):
    src = ui_support.sample_image(tmp_path / "src.png", server["size"])
    editor = {"background": handle_file(str(src)), "layers": [], "composite": None, "id": None}
    with pytest.raises(Exception, match="paint over the area"):
        server["client"].predict(server["model"], editor, [server["cls"]], api_name="/inpaint", **sampler())


def test_outpaint_extends_the_picture(server, tmp_path):
    size = server["size"]
    src = ui_support.sample_image(tmp_path / "src.png", size)
    editor = {"background": handle_file(str(src)), "layers": [], "composite": None, "id": None}
    gallery, _, _ = server["client"].predict(server["model"], editor, [server["cls"]], 0, 0, 16, 0, 4,
                                             api_name="/outpaint", **sampler())
    out = images_of(gallery)[0]
    assert_real_image(out, out.size)
    assert out.width >= out.height


def test_edit_turns_a_region_into_another_class(server, tmp_path):
    size = server["size"]
    src = ui_support.sample_image(tmp_path / "src.png", size)
    gallery, _, _ = server["client"].predict(server["model"], handle_file(str(src)), ["1"], 25, 25, 75, 75, False,
                                             api_name="/edit", **sampler())
    assert_real_image(images_of(gallery)[0], (size, size))


def test_super_resolve_upscales(server, tmp_path):
    size = server["size"]
    src = tmp_path / "small.png"
    Image.open(ui_support.sample_image(tmp_path / "src.png", size)).resize((size // 2, size // 2)).save(src)
    gallery, _, _ = server["client"].predict(server["model"], handle_file(str(src)), [server["cls"]], 2,
                                             api_name="/super_resolve", **sampler())
    out = images_of(gallery)[0]
    assert_real_image(out, out.size)
    assert out.width >= size // 2 * 2 or out.width == size


def test_variation(server, tmp_path):
    size = server["size"]
    src = ui_support.sample_image(tmp_path / "src.png", size)
    gallery, _, _ = server["client"].predict(server["model"], handle_file(str(src)), [server["cls"]], 0.5,
                                             api_name="/variation", **sampler())
    assert_real_image(images_of(gallery)[0], (size, size))


def test_control_shows_the_edge_map_then_the_result(server, tmp_path):
    size = server["size"]
    src = ui_support.sample_image(tmp_path / "src.png", size)
    gallery, _, _ = server["client"].predict(server["model"], handle_file(str(src)), [server["cls"]], "canny", 1.0,
                                             api_name="/control", **sampler())
    edge_map, result = images_of(gallery)
    values = np.unique(np.asarray(edge_map.convert("L")))
    assert set(values.tolist()) <= {0, 255} and len(values) == 2  # a binary edge map of the picture
    assert_real_image(result, (size, size))


def test_unknown_class_is_a_readable_error_and_the_server_keeps_serving(server):
    c = server["client"]
    with pytest.raises(Exception) as info:
        c.predict(server["model"], ["purple unicorn"], batch=1, api_name="/generate", **sampler())
    message = str(info.value)
    assert "unknown class 'purple unicorn'" in message and "Traceback" not in message
    gallery, _, _ = c.predict(server["model"], [server["cls"]], batch=1, api_name="/generate", **sampler())
    assert len(gallery) == 1


def test_models_tab_lists_and_unloads(server):
    c = server["client"]
    table = c.predict(api_name="/models")
    rows = table["data"] if isinstance(table, dict) else table
    mine = [r for r in rows if r[0] == server["model"]]
    assert mine and mine[0][3] == "yes" and mine[0][4] != "—"  # loaded by the tests above
    table = c.predict(server["model"], api_name="/model_unload")
    rows = table["data"] if isinstance(table, dict) else table
    assert [r for r in rows if r[0] == server["model"]][0][4] == "—"
