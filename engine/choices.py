"""The engine's user-facing choices, one list each: the CLI's flags, the nodes' combos and the app's
dropdowns all read these, so a choice the engine gains appears in every front end at once.

Torch-free on purpose (the CLI builds its parser from it before anything heavy is imported); the
modules that implement each choice check at import that they implement exactly these.
"""
from __future__ import annotations

DTYPES = ("float32", "bfloat16", "float16")
DEVICES = ("auto", "cpu", "cuda")
QUANTS = ("none", "int8", "int4-g32", "int4-g64", "int4-g128")  # engine/quantize.py
DECODE_STRATEGIES = ("plain", "sjd", "gsd")  # engine/generate/decoders.py
DRAFT_INITS = ("auto", "above", "uniform", "store")  # speculative drafts: engine/generate/speculative.py
GSD_GROUP_MASS = 0.5  # gsd's default group mass (engine/generate/decoders.py)
CONTROL_TYPES: tuple[str, ...] = ("canny", "none")  # how a picture becomes a control map ("none": it is one)
