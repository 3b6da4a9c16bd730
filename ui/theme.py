"""The app's look: a warm, quiet theme with local fonts only (the page works offline) and a little CSS."""
from __future__ import annotations

import gradio as gr

LOCAL_SANS = ["Inter", "Noto Sans", "ui-sans-serif", "system-ui", "-apple-system", "Segoe UI", "sans-serif"]
LOCAL_MONO = ["JetBrains Mono", "ui-monospace", "SFMono-Regular", "Menlo", "monospace"]

CSS = """
#header {align-items: center; gap: 1.5rem; padding: 0.4rem 0 0.2rem 0;}
#header h1 {font-size: 1.7rem; margin: 0; letter-spacing: -0.02em;}
#header p {margin: 0.2rem 0 0 0; opacity: 0.75;}
.tip {opacity: 0.8; font-size: 0.92rem;}
.run-row button {min-height: 2.8rem;}
.result-gallery img {image-rendering: auto;}
.send-row button {font-size: 0.85rem;}
footer {opacity: 0.6;}
"""


def theme() -> gr.themes.Base:
    return gr.themes.Soft(primary_hue="rose", secondary_hue="amber", neutral_hue="stone",
                          radius_size="lg", font=LOCAL_SANS, font_mono=LOCAL_MONO)
