"""ARModelLoader: choose a model and how to run it; loads where models live (the engine's model cache, or
ComfyUI's model management inside ComfyUI)."""
from __future__ import annotations

from typing import Any

from ..engine.errors import InvalidInputError
from ..engine.registry import DEFAULT_MODEL
from .base import AR_MODEL, COMBO, ExecutionContext, InputSpec, Node, NodeSpec, OutputSpec
from .types import (
    DEVICES, DTYPES, ENGINE_CACHE, QUANTS, ModelHandle, is_model_choice, model_choices, model_not_listed,
    resolve_model_name,
)


class ARModelLoader(Node):
    """Outputs a cheap handle; the bundle itself stays in the model cache (shared, memory-bounded).

    The model is loaded here, at execution, so a missing checkpoint fails at this
    node with the engine's MissingFileError (which file, where it looked, how to get it)
    rather than later inside a task node.
    """

    SPEC = NodeSpec(
        class_type="ARModelLoader", display_name="AR Model Loader", category="loaders",
        inputs=(
            InputSpec("model", COMBO, default=DEFAULT_MODEL, choices=model_choices, unlisted=model_not_listed,
                      is_choice=is_model_choice,
                      tooltip="Bundled model, released checkpoint on disk (the models folder: ARNODES_MODELS_DIR, "
                              "in ComfyUI models/arnodes; or the Hugging Face cache), or a *.json manifest there."),
            InputSpec("dtype", COMBO, default="float32", choices=DTYPES,
                      tooltip="Generator precision; bfloat16 also decodes images in bfloat16 (the tokenizer weights and encoding stay float32)."),
            InputSpec("quant", COMBO, default="none", choices=QUANTS,
                      tooltip="Weight-only quantization of the generator (int4-gN: group size N)."),
            InputSpec("device", COMBO, default="auto", choices=DEVICES,
                      tooltip="auto = in ComfyUI the device ComfyUI chose (--cpu included); elsewhere cuda when "
                              "available, else cpu."),
        ),
        outputs=(OutputSpec("model", AR_MODEL, "Handle to the loaded tokenizer + generator."),),
        description="Load an autoregressive image model (VAR next-scale or LlamaGen next-token).",
    )

    @classmethod
    def execute(cls, ctx: ExecutionContext, model: str, dtype: str, quant: str, device: str) -> tuple[Any, ...]:
        for name, value, allowed in (("dtype", dtype, DTYPES), ("quant", quant, QUANTS)):
            if value not in allowed:
                raise InvalidInputError(f"input {name!r}: {value!r} is not one of {', '.join(allowed)}")
        if not isinstance(model, str) or not model.strip():
            raise InvalidInputError(f"input 'model' must be a model name, got {model!r}")
        host = getattr(ctx, "model_host", None)  # ComfyUI's model management, inside ComfyUI
        handle = ModelHandle(resolve_model_name(model.strip()), (host or ENGINE_CACHE).resolve_device(device), dtype,
                             quant, getattr(ctx, "models_dir", None), host=host)
        handle.load()
        return (handle,)
