"""arnodes: a node-based backend for autoregressive image generation (VAR, LlamaGen).

This file is both the package root and a ComfyUI custom-node entry point, so it
must stay light: importing it loads no model and creates no GPU context.
"""
__version__ = "0.1.0"
