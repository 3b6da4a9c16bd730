"""Socket payloads and the small helpers every task node shares.

AR_MODEL carries a `ModelHandle`, not a loaded bundle: the graph cache keys
outputs by value and may keep them for a long time, so the heavy tokenizer and
generator live in the engine's model cache (bounded, evicting) and are pinned
only while a node runs (`with handle.use() as bundle:`).
"""
from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from ..engine.errors import ArnodesError, InvalidInputError, MissingFileError, UnsupportedError
from ..engine.limits import check_batch
from ..engine.choices import DECODE_STRATEGIES, DEVICES, DRAFT_INITS, DTYPES, GSD_GROUP_MASS, QUANTS
from .base import COMBO, FLOAT, INT, InputSpec

MAX_SEED = 2 ** 63 - 1
MAX_DRAFT_WINDOW = 1024  # engine/generate/speculative.py: SpeculativeParams
MAX_GROUP_MASS = 0.99  # group_mass < 1


@dataclass(frozen=True)
class ModelHandle:
    """What AR_MODEL carries: enough to get the bundle from where models live (cheap, hashable).

    ``host`` is where that is: None = the engine's model cache (CLI, app, scripts); inside ComfyUI,
    ComfyUI's model management (``comfy_models.ComfyModels``)."""

    name: str
    device: str = "cpu"
    dtype: str = "float32"
    quant: str = "none"
    models_dir: str | None = None
    host: Any = field(default=None, compare=False, repr=False)
    _kept: list = field(default_factory=list, compare=False, repr=False)

    def use(self, images: int = 0, what: str = "") -> Any:
        """``with handle.use(...) as bundle``: the loaded ModelBundle, on its device and locked for this
        node. ``images`` > 0: a generation of that many images follows, so memory for its working set
        is made first (other models evicted), or the request is refused with the numbers."""
        return self._host().use(self, images, what)

    def pinned(self, what: str = "") -> Any:
        """``with handle.pinned() as (bundle, reserve)``: the bundle ready but not locked, and
        ``reserve(images)``: for the request batcher, which locks and reserves for the batch it forms."""
        return self._host().pinned(self, what)

    def load(self) -> Any:
        """Load (or find) the model now, so a missing file fails at the loader node."""
        return self._host().load(self)

    def kept(self, make: Callable[[], Any]) -> Any:
        """A host's object that lives as long as this handle (made by ``make`` on first call)."""
        if not self._kept:
            self._kept.append(make())
        return self._kept[0]

    def _host(self) -> Any:
        return self.host if self.host is not None else ENGINE_CACHE


class EngineModelCache:
    """Outside ComfyUI models live in the engine's process-wide cache (memory-bounded, LRU)."""

    @staticmethod
    def resolve_device(device: str) -> str:
        return resolve_device(device)

    @staticmethod
    def load(handle: ModelHandle) -> Any:
        from ..engine.model_cache import default_cache

        return default_cache().get(handle.name, device=handle.device, dtype=handle.dtype, quant=handle.quant,
                                   models_dir=handle.models_dir)

    @staticmethod
    @contextmanager
    def use(handle: ModelHandle, images: int = 0, what: str = "") -> Iterator[Any]:
        from ..engine.memory import working_set
        from ..engine.model_cache import default_cache

        cache = default_cache()
        with cache.use(handle.name, device=handle.device, dtype=handle.dtype, quant=handle.quant,
                       models_dir=handle.models_dir) as bundle:
            with cache.reserve(bundle.device, working_set(bundle, images), f"{what or handle.name} ({images} image(s))",
                               bundle):
                yield bundle

    @staticmethod
    @contextmanager
    def pinned(handle: ModelHandle, what: str = "") -> Iterator[tuple[Any, Callable[[int], Any]]]:
        from ..engine.memory import working_set
        from ..engine.model_cache import default_cache

        cache = default_cache()
        with cache.pinned(handle.name, device=handle.device, dtype=handle.dtype, quant=handle.quant,
                          models_dir=handle.models_dir) as bundle:
            yield bundle, lambda n: cache.reserve(bundle.device, working_set(bundle, n),
                                                  f"{what or handle.name} ({n} image(s))", bundle)


ENGINE_CACHE = EngineModelCache()


def models_dir() -> Path:
    """Where user models live: ARNODES_MODELS_DIR or ~/.cache/arnodes/models (the engine's rule)."""
    from ..engine.resolve import default_models_dir

    return default_models_dir()


def local_manifests(directory: Path | None = None) -> dict[str, Path]:
    """Model manifests (`*.json` with "family" and "generator") in the models directory: file name -> path."""
    directory = models_dir() if directory is None else Path(directory)
    found: dict[str, Path] = {}
    if not directory.is_dir():
        return found
    for path in sorted(directory.glob("*.json")):
        if _is_manifest(path):
            found[path.name] = path
    return found


def _is_manifest(path: Path) -> bool:
    """A readable JSON object with "family" and "generator": what the models directory lists as a model."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and "family" in data and "generator" in data


def class_name_choices() -> list[str]:
    """Every class name a picker can offer: the bundled models' classes first, then ImageNet's 1,000
    (the released checkpoints' classes), without repeats."""
    import json

    from ..engine.classes import load_class_names
    from ..engine.registry import bundled_manifests, manifest_class_spec

    names: list[str] = []
    for path in bundled_manifests().values():
        try:
            spec = manifest_class_spec(json.loads(path.read_text()))
            if spec is None:  # a text-to-image model
                continue
            names += load_class_names(spec, base_dir=path.parent).names
        except (OSError, ValueError, ArnodesError):
            continue  # a broken manifest is reported when that model is loaded, not here
    names += load_class_names("imagenet").names
    return list(dict.fromkeys(names))


def style_choices() -> list[str]:
    """'any' (the seed picks a style) and the bundled models' drawing styles."""
    from ..engine.loader import ANY_STYLE
    from ..engine.registry import bundled_style_names

    return [ANY_STYLE] + bundled_style_names()


def control_choices() -> list[str]:
    """The control adapters of the bundled models and of the manifests in the models directory (e.g.
    "canny"); a model without the chosen adapter says so when it runs."""
    from ..engine.registry import bundled_control_names

    names = bundled_control_names()
    for path in local_manifests().values():
        try:
            controls = json.loads(path.read_text(encoding="utf-8")).get("controls", {})
        except (OSError, ValueError):
            continue
        names += [c for c in controls if isinstance(c, str) and c not in names] if isinstance(controls, dict) else []
    return names or ["canny"]


def model_choices() -> list[str]:
    """Models that run without a download: the default first (listed even before it is installed: the
    loader then says how to get it), other bundled models, released checkpoints whose files are on
    disk, and local manifests. Known checkpoints not on disk are not choices (``model_not_listed``
    says how to fetch one; `arnodes models` and the app's Models tab list them)."""
    from ..engine.registry import DEFAULT_MODEL, REGISTRY, bundled_model_names, checkpoint_present

    names = [DEFAULT_MODEL] + [n for n in bundled_model_names() if n != DEFAULT_MODEL]
    names += [n for n, entry in REGISTRY.items() if n not in names and checkpoint_present(entry)]
    names += [n for n in local_manifests() if n not in names]
    return names


def is_model_choice(name: str) -> bool:
    """``name in model_choices()``, checking only that one model's files."""
    from ..engine.registry import DEFAULT_MODEL, REGISTRY, bundled_manifests, checkpoint_present

    if name == DEFAULT_MODEL or name in bundled_manifests():
        return True
    if name in REGISTRY:
        return checkpoint_present(REGISTRY[name])
    return Path(name).name == name and name.endswith(".json") and _is_manifest(models_dir() / name)


def model_not_listed(name: str) -> str | None:
    """Why a known model is not among the choices: its files are not on disk, and how to get them."""
    from ..engine.registry import REGISTRY, how_to_fetch

    entry = REGISTRY.get(name)
    if entry is None:
        return None
    return f"model {name!r} is a released checkpoint that is not on disk yet; to use it, {how_to_fetch(entry)}"


def resolve_model_name(name: str) -> str:
    """A local manifest's file name becomes its full path (what the loader accepts); others pass through.

    The bundled default missing from weights/ is a missing file, not an unknown name."""
    from ..engine.registry import DEFAULT_MODEL, REGISTRY, WEIGHTS_DIR, bundled_model_names

    local = local_manifests()
    if name in local:
        return str(local[name])
    if name == DEFAULT_MODEL and name not in bundled_model_names() and name not in REGISTRY:
        raise MissingFileError(
            f"input 'model': the bundled default model {name!r} is not installed (no manifest for it in "
            f"{WEIGHTS_DIR}); train and export it with `python -m arnodes.training.train --export weights`, "
            f"or choose another model")
    return name


def resolve_device(device: str) -> str:
    if device not in DEVICES:
        raise InvalidInputError(f"input 'device': {device!r} is not one of {', '.join(DEVICES)}")
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise UnsupportedError("input 'device': 'cuda' was requested but no CUDA device is available "
                               "(or this torch build has no CUDA); use 'auto' or 'cpu'")
    return device


# --------------------------------------------------------------------------- shared inputs

def seed_input() -> InputSpec:
    return InputSpec("seed", INT, default=0, min=0, max=MAX_SEED,
                     tooltip="Random seed; the same seed on the same device reproduces the image bit for bit.")


def sampler_inputs() -> tuple[InputSpec, ...]:
    """top_k 0 and top_p 1.0 switch those filters off (sample the full distribution)."""
    return (
        seed_input(),
        InputSpec("top_k", INT, default=0, min=0, max=1_000_000,
                  tooltip="Sample only among the k most likely tokens; 0 = off."),
        InputSpec("top_p", FLOAT, default=1.0, min=0.0, max=1.0, step=0.01,
                  tooltip="Nucleus sampling: keep the smallest token set with this probability mass; 1.0 = off."),
        InputSpec("temperature", FLOAT, default=1.0, min=0.0, max=5.0, step=0.01,
                  tooltip="Below 1 sharpens, above 1 flattens the token distribution; 0 = greedy."),
    )


def sampling_params(bundle: Any, top_k: int, top_p: float, temperature: float, more_smooth: bool = False):
    """SamplingParams with the family's own top-p rule (what its reference implementation does)."""
    from ..engine.sampling import SamplingParams

    check_range("top_k", top_k, 0, None)
    check_range("top_p", top_p, 0.0, 1.0)
    check_range("temperature", temperature, 0.0, None)
    style = "llamagen" if bundle.family == "llamagen" else "var"
    return SamplingParams(temperature=float(temperature), top_k=int(top_k), top_p=float(top_p),
                          top_p_style=style, more_smooth=bool(more_smooth))


def decode_inputs() -> tuple[InputSpec, ...]:
    """The decode strategy (engine/generate/decoders.py) and its knobs; speculative ones apply to raster
    models. Optional: they came after workflows were saved without them, and ComfyUI refuses an API
    prompt that lacks a required input (it does not fill in defaults)."""
    return (
        InputSpec("decode", COMBO, default="plain", choices=DECODE_STRATEGIES, optional=True,
                  tooltip="Raster models: plain (a forward per token), sjd (speculative Jacobi: fewer forwards, "
                          "same distribution), gsd (grouped: fewest forwards, slightly lossy)."),
        InputSpec("draft_window", INT, default=0, min=0, max=MAX_DRAFT_WINDOW, optional=True,
                  tooltip="sjd / gsd: drafts verified per forward; 0 = one grid row."),
        InputSpec("draft_init", COMBO, default="auto", choices=DRAFT_INITS, optional=True,
                  tooltip="sjd / gsd: where drafts come from. auto = the model's draft store when it ships one, "
                          "else above; above = the token one row up; uniform = a random token; store = the "
                          "model's store (an error if it has none)."),
        InputSpec("group_mass", FLOAT, default=GSD_GROUP_MASS, min=0.0, max=MAX_GROUP_MASS, step=0.05, optional=True,
                  tooltip="gsd only: a draft among the most probable tokens holding this much of the model's "
                          "probability is accepted outright (0 = exact, like sjd)."),
    )


def decode_options(decode: str = "plain", draft_window: int = 0, draft_init: str = "auto",
                   group_mass: float = GSD_GROUP_MASS):
    """The node inputs of ``decode_inputs`` -> the engine's DecodeOptions (group_mass only reaches gsd)."""
    from ..engine.generate.decoders import DecodeOptions

    check_range("draft_window", draft_window, 0, MAX_DRAFT_WINDOW)
    check_range("group_mass", group_mass, 0.0, MAX_GROUP_MASS)
    return DecodeOptions(decode, window=int(draft_window) or None, init=draft_init,
                         group_mass=float(group_mass) if decode == "gsd" else None)


def run_settings(ctx: Any, bundle: Any, seed: int, top_k: int, top_p: float, temperature: float,
                 more_smooth: bool = False, decode: str = "plain", draft_window: int = 0, draft_init: str = "auto",
                 group_mass: float = GSD_GROUP_MASS):
    from ..engine.tasks import RunSettings

    check_range("seed", seed, 0, MAX_SEED)
    options = decode_options(decode, draft_window, draft_init, group_mass)
    options.check_family(bundle.family)
    return RunSettings(sampling_params(bundle, top_k, top_p, temperature, more_smooth), int(seed), ctx.progress,
                       decode=options)


def check_range(name: str, value: Any, lo: float | None, hi: float | None) -> None:
    """Nodes are also called directly (ComfyUI, scripts), so they re-check what the validator checks."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidInputError(f"input {name!r}: expected a number, got {value!r}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        allowed = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise InvalidInputError(f"input {name!r}: {value!r} is out of range; allowed: {allowed}")


def check_model(model: Any) -> ModelHandle:
    if not isinstance(model, ModelHandle):
        raise InvalidInputError(f"input 'model' must come from ARModelLoader (AR_MODEL), got {type(model).__name__}")
    return model


def match_batch(cond: Any, n: int, what: str = "image"):
    """One class for n images is repeated; one image for n classes is expanded by the engine; k classes
    for a multiple of k images (what ARGenerate made of them with a batch size) repeat each class in
    that batch's order, so a multi-class condition can be reused on the images it generated."""
    from ..engine.conditioning import Conditioning

    if not isinstance(cond, Conditioning):
        raise InvalidInputError(f"input 'cond' must come from ARClassCondition or ARTextCondition (AR_COND), got "
                                f"{type(cond).__name__}")
    check_batch(max(cond.batch, n), f"input {what!r}")
    if cond.batch == n or n == 1:
        return cond
    if n % cond.batch == 0:
        return cond.repeat(n // cond.batch)
    kind = "prompts" if cond.text is not None else "classes"
    raise InvalidInputError(f"input 'cond' has {cond.batch} {kind} but input {what!r} has {n} images; "
                            f"give one of them, one image, or a multiple of the {kind}' count of images")
