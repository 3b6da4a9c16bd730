"""The per-token / per-scale step, compiled behind one switch, with the eager step as the fallback.

``--compile auto|on|off`` (CLI), ``ARNODES_COMPILE`` (environment) or ``generate(..., compile=)``:

- ``off``: the eager step, always available.
- ``on``: ``torch.compile`` of the step alone (gpt-fast's recipe: prefill and sampling stay eager). On
  CUDA with ``mode="reduce-overhead"``, i.e. CUDA graphs, which needs the decode step's static shapes
  (static KV cache, full-length attention). On the CPU the inductor C++ backend (needs a compiler).
- ``auto`` (default): ``on`` on CUDA, ``off`` on the CPU. Measured on the 2-core CPU (bench/README.md):
  compiling a step takes tens of seconds, more than it saves on an image, and the CPU step is bound by
  weight reads that compilation does not change.

If compiling fails (no C/C++ compiler, an unsupported op), the step falls back to eager with a warning,
once per model: compile is an optimisation, never a reason for a request to fail.
"""
from __future__ import annotations

import logging
import os
from typing import Callable, Literal

import torch

from ..errors import InvalidInputError

logger = logging.getLogger(__name__)

CompileMode = Literal["auto", "on", "off"]
COMPILE_MODES: tuple[str, ...] = ("auto", "on", "off")
ENV_VAR = "ARNODES_COMPILE"
_default_mode: str | None = None
_RECOMPILE_LIMIT = 64  # VAR compiles one graph per scale (up to 10 at 256 px); keep them all


def check_mode(mode: str) -> str:
    if mode not in COMPILE_MODES:
        raise InvalidInputError(f"compile mode {mode!r} is not one of {', '.join(COMPILE_MODES)}")
    return mode


def set_default_mode(mode: str | None) -> None:
    """The process-wide choice (the CLI's ``--compile``); None = back to ``$ARNODES_COMPILE`` or auto."""
    global _default_mode
    _default_mode = None if mode is None else check_mode(mode)


def default_mode() -> str:
    if _default_mode is not None:
        return _default_mode
    return check_mode(os.environ.get(ENV_VAR, "auto").strip().lower() or "auto")


def wants_compile(mode: str | None, device: torch.device) -> bool:
    mode = check_mode(mode) if mode is not None else default_mode()
    if mode == "auto":
        return device.type == "cuda"
    return mode == "on"


class StepFunction:
    """One model's step (a bound method), eager or compiled; a failed compile falls back to eager."""

    def __init__(self, eager: Callable, device: torch.device, dynamic: bool | None) -> None:
        self.eager, self.dynamic = eager, dynamic
        self.compiled: Callable | None = None
        self.failed = False
        self.device = device

    @property
    def static_shapes(self) -> bool:
        """Whether the compiled step must see one shape on every call: CUDA graphs replay fixed buffers.
        Elsewhere a dynamic step can attend only the filled part of the KV cache."""
        return self.device.type == "cuda" and not self.dynamic

    def _compile(self) -> Callable:
        if self.compiled is None:
            import torch._dynamo.config as dynamo_config
            for name in ("recompile_limit", "cache_size_limit"):  # the name changed across torch versions
                if hasattr(dynamo_config, name):
                    setattr(dynamo_config, name, max(getattr(dynamo_config, name), _RECOMPILE_LIMIT))
            mode = "reduce-overhead" if self.device.type == "cuda" else None
            self.compiled = torch.compile(self.eager, mode=mode, fullgraph=True, dynamic=self.dynamic)
        return self.compiled

    def __call__(self, use_compiled: bool, *args, **kwargs) -> torch.Tensor:
        if use_compiled and not self.failed:
            try:
                out = self._compile()(*args, **kwargs)
                if self.device.type == "cuda":
                    out = out.clone()  # a CUDA-graph output is overwritten by the next replay
                return out
            except Exception as exc:  # noqa: BLE001 - any compiler failure: run eager instead
                self.failed = True
                logger.warning("compiling %s failed (%s: %s); running it eagerly",
                               getattr(self.eager, "__qualname__", self.eager), type(exc).__name__,
                               str(exc).splitlines()[0] if str(exc) else "")
        return self.eager(*args, **kwargs)


def step_function(model: torch.nn.Module, name: str, dynamic: bool | None = False) -> StepFunction:
    """The model's ``name`` step (e.g. ``decode_step``), kept on the model so compiled graphs are reused
    by every request the cached model serves. ``dynamic=True`` traces one graph for every length (VAR's
    scales); on CUDA, CUDA graphs are still recorded once per shape."""
    steps: dict[str, StepFunction] = model.__dict__.setdefault("_arnodes_steps", {})
    device = next(p.device for p in model.parameters())
    fn = steps.get(name)
    if fn is None or fn.device != device:
        fn = steps[name] = StepFunction(getattr(model, name), device, dynamic)
    return fn
