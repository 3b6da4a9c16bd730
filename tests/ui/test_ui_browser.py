"""The web app in a real browser: headless Chromium (Debian's `chromium`) driven by Playwright.

One test picks a class and generates; one paints a mask on the image editor with the mouse and
inpaints. Each saves a screenshot in its tmp dir, and in $ARNODES_SCREENSHOT_DIR when set.
Skipped, with the reason, when Playwright or /usr/bin/chromium is missing (CI installs both:
`pip install -e '.[test]'` and `apt-get install -y chromium`; never `playwright install`).
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

CHROMIUM = Path(os.environ.get("ARNODES_CHROMIUM", "/usr/bin/chromium"))
pytest.importorskip("gradio", reason="the web-app tests need the [ui] extra")
sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (pip install playwright)")
if not CHROMIUM.is_file():
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install -y chromium)", allow_module_level=True)

import ui_support  # noqa: E402  (tests/ is on sys.path, see tests/conftest.py)

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-quic",
        "--no-first-run", "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 90_000


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    from arnodes.ui.app import build_app
    from arnodes.ui.callbacks import WorkflowRunner

    root = tmp_path_factory.mktemp("ui_browser")
    with pytest.MonkeyPatch.context() as mp:
        ui_support.pick_model(root, mp)
        with ui_support.serving(build_app(WorkflowRunner(root / "work"))) as address:
            yield address


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, url):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(url)
    page.get_by_role("button", name="Generate", exact=True).wait_for()
    yield page
    context.close()


def screenshot(page, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True)
    if os.environ.get("ARNODES_SCREENSHOT_DIR"):
        target = Path(os.environ["ARNODES_SCREENSHOT_DIR"])
        target.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target / name)
    return path


def wait_until(locator, condition: str, timeout_s: float = TIMEOUT_MS / 1000) -> None:
    """Poll ``condition`` (a JS function of the element) on whatever element ``locator`` finds now: Gradio
    re-renders components, and a handle taken earlier can stay on a detached node forever."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if locator.evaluate(condition, timeout=2_000):
                return
        except sync_api.Error:  # not there yet, or replaced while we looked: look again
            pass
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {condition} on {locator}")


def upload_into_editor(panel, src: Path, tries: int = 3) -> None:
    """Upload ``src`` into the panel's image editor until it lands (its history gains a step: Undo turns
    enabled). An upload made while the editor is still mounting can be dropped; it is then made again."""
    undo = panel.get_by_role("button", name="Undo")
    for attempt in range(tries):
        panel.locator("input[type=file]").first.set_input_files(str(src))
        panel.locator("canvas").first.wait_for()
        try:
            wait_until(undo, "b => !b.disabled", timeout_s=30.0)
            return
        except AssertionError:
            if attempt == tries - 1:
                raise


def wait_decoded(page, img) -> None:
    """Wait until the browser has fetched and decoded the image (attached is not loaded: naturalWidth 0)."""
    wait_until(img, "img => img.complete && img.naturalWidth > 0")


def visible_panel(page):
    return page.locator("[role=tabpanel]:visible").first


def test_pick_a_class_and_generate(page, tmp_path):
    panel = visible_panel(page)
    picker = panel.get_by_label("Classes")
    picker.click()
    picker.fill("cat")
    page.get_by_role("option", name="cat face").click()
    page.keyboard.press("Escape")
    assert panel.get_by_text("cat face").count() >= 1
    panel.get_by_role("button", name="Generate", exact=True).click()
    images = panel.locator(".result-gallery img")
    images.first.wait_for()
    wait_decoded(page, images.first)
    assert images.count() >= 2  # two classes x "images per class"
    assert images.first.evaluate("img => img.naturalWidth") > 0
    panel.get_by_text("arnodes_generate_").first.wait_for()
    assert screenshot(page, tmp_path, "generate.png").stat().st_size > 10_000


def test_paint_a_mask_and_inpaint(page, tmp_path):
    page.get_by_role("tab", name="Inpaint / Outpaint").click()
    panel = visible_panel(page)
    panel.get_by_role("button", name="Inpaint", exact=True).wait_for()  # the tab's own panel is the visible one
    src = ui_support.sample_image(tmp_path / "source.png", 64)
    upload_into_editor(panel, src)
    canvas = panel.locator("canvas").first
    brush = panel.get_by_role("button", name="Brush")
    if brush.count():
        brush.first.click()
    box = canvas.bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(cx - 60, cy - 40)
    page.mouse.down()
    for step in range(12):
        page.mouse.move(cx - 60 + step * 10, cy - 40 + (step % 3) * 30, steps=3)
    page.mouse.up()
    panel.get_by_role("button", name="Inpaint", exact=True).click()
    result = panel.locator(".result-gallery img")
    result.first.wait_for()
    wait_decoded(page, result.first)
    assert result.first.evaluate("img => img.naturalWidth") > 0
    assert panel.get_by_text("Check the inputs").count() == 0
    assert screenshot(page, tmp_path, "inpaint.png").stat().st_size > 10_000
