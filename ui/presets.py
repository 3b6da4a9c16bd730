"""UI-side defaults and examples: sampler defaults, example classes, example workflows, tab tips.

Kept apart from the layout so the app and its tests agree on the same values.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

WORKFLOWS_DIR = Path(__file__).resolve().parent.parent / "workflows"

SAMPLER_DEFAULTS = {"cfg": 4.0, "top_k": 0, "top_p": 1.0, "temperature": 1.0, "batch": 2}
QUEUE_SIZE = 32  # waiting jobs; one more gets Gradio's "queue is full" message
# runs in flight at once: each model still generates one batch at a time, and generate requests that
# arrive together share a batch (engine/batching.py), so several users cost little more than one
CONCURRENT_RUNS = 16
MAX_BATCH = 8  # per class, from the page (the node allows more, the CPU would not thank us)

# Classes an artist would try first; those the model lacks are skipped (see example_classes).
FAVOURITE_CLASSES: tuple[tuple[str, ...], ...] = (
    ("red heart",), ("grinning face", "cat face"), ("sun", "crescent moon", "star"), ("fire",),
    ("golden retriever",), ("volcano", "lakeside"),
)

TIPS = {
    "generate": "Pick one or more classes (type to search), then **Generate**. Each class gets its own images. "
                "Text-to-image models take a **prompt** instead (every tab has one).",
    "inpaint": "Upload an image, **paint over what should change** with the brush, pick what it should become.",
    "outpaint": "Add pixels on any side; the new border is generated to continue the picture.",
    "edit": "Choose a box (in % of the image) and the class it should turn into; the rest is kept.",
    "superres": "Upscale an image: its coarse structure is kept and the fine detail is generated.",
    "control": "**Follow structure** draws the class along the picture's edges (the control map is shown first); "
               "**Variation** keeps the picture's look and re-draws detail.",
    "workflow": "Upload an API-format workflow `.json` (arnodes or ComfyUI *Export (API)*) or a `.png` made by "
                "arnodes / ComfyUI. Edit any value in the table and **Run**.",
    "models": "Models that are present run without a download. Loading one ahead makes the first image faster.",
}


def example_classes(choices: Sequence[tuple[str, str]] | Sequence[str], n: int = 4) -> list[list[str]]:
    """Up to `n` class-picker examples the current model knows; falls back to its first classes."""
    values = [c[1] if isinstance(c, (tuple, list)) else c for c in choices]
    known = set(values)
    picks = [list(group) for group in FAVOURITE_CLASSES if all(c in known for c in group)]
    for v in values:
        if len(picks) >= n:
            break
        if [v] not in picks:
            picks.append([v])
    return picks[:n]


def example_workflows() -> list[str]:
    """The example workflow files shipped in workflows/ (run by the test-suite too)."""
    if not WORKFLOWS_DIR.is_dir():
        return []
    return [str(p) for p in sorted(WORKFLOWS_DIR.glob("*.json"))]
