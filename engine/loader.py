"""Build a ModelBundle (tokenizer + generator + class names or a text encoder) from a name or a manifest.

Table-driven: a ``kind`` names a module and its model/config classes. A model class
may define ``OPTIONAL_STATE_KEYS`` or a method ``optional_state_keys()`` (buffers a
file may lack), a (class)method ``remap_state_dict(sd)`` (drop / rename keys of the official layout) and a method
``post_load()`` (recompute non-persistent buffers after a meta-device build).
"""
from __future__ import annotations

import dataclasses
import importlib
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoint import build_on_meta, load_into, read_checkpoint, unwrap_state_dict
from .classes import ClassNames, load_class_names
from .control import load_controls
from .kinds import config_from_json, kind_classes
from .layers import pack_for_cpu
from .errors import ArnodesError, CheckpointError, InvalidInputError, MissingFileError, UnknownNameError
from .generate.draft_store import DraftStore, load_draft_store
from .registry import REGISTRY, bundled_manifests, get_entry, manifest_class_spec
from .resolve import resolve_file

ANY_STYLE = "any"

# kind -> (module relative to engine/, model class, config class); each module also has PRESETS
KINDS: dict[str, tuple[str, str, str]] = {
    "msvq": (".tokenizers.msvq", "MSVQTokenizer", "MSVQConfig"),
    "var": (".models.var", "VAR", "VARConfig"),
    "vq": (".tokenizers.vq", "VQTokenizer", "VQConfig"),
    "llamagen": (".models.llamagen", "LlamaGen", "LlamaGenConfig"),
}


@dataclass
class ModelBundle:
    """A loaded model: what the AR_MODEL graph type carries."""

    name: str
    family: str  # "var" | "llamagen"
    tokenizer: nn.Module
    generator: nn.Module
    classes: ClassNames | None  # None: a text-to-image model (it takes prompts, through text_encoder)
    image_size: int
    defaults: dict[str, Any] = field(default_factory=dict)
    styles: tuple[str, ...] = ()  # drawing styles the generator was trained on (its style embedding rows)
    controls: dict[str, Any] = field(default_factory=dict)  # name -> control.ControlAdapter
    text_encoder: Any = None  # text.encoders.PromptEncoder of a text-to-image model
    draft_store: DraftStore | None = None  # token grids for speculative drafts (raster models that ship them)
    # one generation at a time per loaded model: the generator holds its KV cache as module state, so
    # two threads decoding on one bundle would overwrite each other's cache (mixed-up images)
    generation_lock: threading.RLock = field(default_factory=threading.RLock, repr=False, compare=False)

    def control(self, name: str):
        """The control adapter ``name`` this model ships (e.g. "canny")."""
        if name not in self.controls:
            known = ", ".join(sorted(self.controls)) or "none"
            raise UnknownNameError(f"model {self.name!r} has no control adapter {name!r}; it has: {known}")
        return self.controls[name]

    def style_id(self, name: str) -> int | None:
        """Row of style ``name`` (case-insensitive); None for "any" (the classifier-free row)."""
        key = " ".join(str(name).split()).casefold()
        if key in ("", ANY_STYLE):
            return None
        for i, s in enumerate(self.styles):
            if s.casefold() == key:
                return i
        known = ", ".join((ANY_STYLE,) + self.styles)
        raise UnknownNameError(f"unknown style {name!r} for model {self.name!r}; known: {known}")

    @property
    def takes_text(self) -> bool:
        """A text-to-image model: it is conditioned on prompts, not class ids (its generator decides)."""
        return bool(getattr(getattr(self.generator, "config", None), "is_t2i", False))

    @property
    def tokenizer_id(self) -> str:
        return f"{self.name}:tokenizer"

    @property
    def device(self) -> torch.device:
        return next(self.generator.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.generator.parameters()).dtype

    def resident_bytes(self) -> int:
        mods = (self.tokenizer, self.generator, *(c.module for c in self.controls.values()),
                *(() if self.text_encoder is None else (self.text_encoder.module,)))
        store = () if self.draft_store is None else (self.draft_store.tokens, self.draft_store.labels)
        tensors = [t for m in mods for t in list(m.parameters()) + list(m.buffers())] + [t for t in store if t is not None]
        return sum(t.numel() * t.element_size() for t in tensors)


def _kind(kind: str) -> tuple[type, type]:
    return kind_classes(KINDS, kind, __package__, "model")


def config_from_dict(kind: str, data: dict[str, Any]):
    return config_from_json(_kind(kind)[1], data, kind)


def preset_config(kind: str, preset: str):
    model_cls, _ = _kind(kind)
    module = importlib.import_module(model_cls.__module__)
    presets = getattr(module, "PRESETS")
    if preset not in presets:
        raise InvalidInputError(f"unknown {kind} preset {preset!r}; available: {sorted(presets)}")
    return presets[preset]


def build_module(kind: str, config, state_dict: dict[str, torch.Tensor] | None, source: str,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                 consume: bool = False) -> nn.Module:
    """Build on meta, load the state dict by assignment, move to device/dtype, eval mode. ``consume``
    empties ``state_dict`` once loaded: the model then holds the only references, so a cast to ``dtype``
    frees each float32 tensor as it converts (loading peaks at one copy of the weights, not two)."""
    model_cls, _ = _kind(kind)
    if state_dict is None:
        model = model_cls(config)
    else:
        model = build_on_meta(lambda: model_cls(config))
        sd = model.remap_state_dict(state_dict) if hasattr(model, "remap_state_dict") else state_dict
        optional = (model.optional_state_keys() if hasattr(model, "optional_state_keys")
                    else getattr(model_cls, "OPTIONAL_STATE_KEYS", ()))
        load_into(model, sd, source, optional=optional)
        del sd
        if consume:
            state_dict.clear()
        if hasattr(model, "post_load"):
            model.post_load()
    return cast_then_move(model, device, dtype).eval().requires_grad_(False)


def cast_then_move(model: nn.Module, device: torch.device | str, dtype: torch.dtype) -> nn.Module:
    """Cast on the host, then move: a half-precision model never holds its float32 copy on the device
    (a bfloat16 VAR-d30 needs its 4 GB of GPU memory to load, not 8), and half the bytes cross the bus."""
    if dtype != torch.float32:
        model = model.to(dtype=dtype)
    return model.to(device=device)


def load_module_file(kind: str, config, path: Path, device="cpu", dtype=torch.float32) -> nn.Module:
    sd = unwrap_state_dict(read_checkpoint(path), source=str(path))
    return build_module(kind, config, sd, str(path), device, dtype, consume=True)


def load_generator_file(kind: str, config, path: Path, device="cpu", dtype=torch.float32,
                        quant: str = "none") -> nn.Module:
    """The generator, weight-quantized per ``quant`` (see :mod:`.quantize`), its large linears packed
    for the CPU's kernels where that pays (``layers.pack_for_cpu``; a no-op on other devices).

    A file written by ``save_quantized`` is loaded as is (no float round trip); it serves
    its own mode, so asking for a different one is refused.
    """
    return pack_for_cpu(_read_generator(kind, config, path, device, dtype, quant))


def _read_generator(kind: str, config, path: Path, device, dtype: torch.dtype, quant: str) -> nn.Module:
    from .quantize import check_supported, load_quantized_into, quantize_model, read_quant_metadata
    check_supported(quant, device)
    meta = read_quant_metadata(path)
    if meta is not None:
        saved = meta.get("quant", "")
        if quant not in ("none", saved):
            raise InvalidInputError(f"{path} holds {saved!r}-quantized weights; {quant!r} was requested. Load the "
                                    f"float checkpoint to quantize it differently")
        check_supported(saved, device)
        model_cls, _ = _kind(kind)
        model = build_on_meta(lambda: model_cls(config))
        load_quantized_into(model, path, expected_mode=saved)
        return cast_then_move(model, device, dtype).eval()
    if quant == "none":
        return load_module_file(kind, config, path, device, dtype)
    model = quantize_model(load_module_file(kind, config, path, "cpu", torch.float32), quant)  # from float32
    return cast_then_move(model, device, dtype).eval()


def load_manifest(path: str | Path, device="cpu", dtype=torch.float32, quant: str = "none",
                  models_dir: str | Path | None = None, offline: bool | None = None) -> ModelBundle:
    """A bundle described by a JSON manifest (the bundled emoji model's format). A text-to-image
    generator needs a "text_encoder" entry (text/encoders.py; ``models_dir`` is where a released
    encoder it names is looked for), and a class-conditional one must not have one."""
    path = _manifest_file(Path(path))
    data = _read_json(path)
    if data.get("draft_store") is not None and data.get("family") != "llamagen":  # before any weights are read
        raise CheckpointError(f"{path}: a 'draft_store' serves raster (llamagen) models, not {data.get('family')!r} ones")
    try:
        tok, gen = data["tokenizer"], data["generator"]
        (_, tok_cfg), (_, gen_cfg) = _manifest_configs(data)
        tokenizer = load_module_file(tok["kind"], tok_cfg, path.parent / tok["file"], device, torch.float32)
        generator = load_generator_file(gen["kind"], gen_cfg, path.parent / gen["file"], device, dtype, quant)
        spec = manifest_class_spec(data)
        classes = None if spec is None else load_class_names(str(spec), base_dir=path.parent)
        controls = load_controls(data.get("controls"), path.parent, str(path), device)
        text = _text_encoder(data.get("text_encoder"), gen_cfg, path.parent, str(path), device, dtype, models_dir,
                             offline)
        store = _draft_store(data.get("draft_store"), gen_cfg, path, device)
        return ModelBundle(name=str(data["name"]), family=str(data["family"]), tokenizer=tokenizer,
                           generator=generator, classes=classes, image_size=int(data["image_size"]),
                           defaults=dict(data.get("defaults", {})), styles=_styles(data, gen_cfg, path),
                           controls=controls, text_encoder=text, draft_store=store)
    except KeyError as e:
        raise CheckpointError(f"{path}: manifest lacks the field {e.args[0]!r}") from None


def _manifest_file(path: Path) -> Path:
    """A manifest file, or the one manifest in a directory."""
    if not path.is_dir():
        return path
    manifests = [p for p in sorted(path.glob("*.json")) if "generator" in _read_json(p)]
    if len(manifests) != 1:
        raise MissingFileError(f"{path}: expected exactly one model manifest (*.json with 'generator'), "
                               f"found {[p.name for p in manifests]}")
    return manifests[0]


ModuleConfig = tuple[str, Any]  # (kind, config)


def _manifest_configs(data: dict) -> tuple[ModuleConfig, ModuleConfig]:
    """(tokenizer, generator) kinds and configs of a manifest (KeyError names a missing field)."""
    tok, gen = data["tokenizer"], data["generator"]
    return ((tok["kind"], config_from_dict(tok["kind"], tok["config"])),
            (gen["kind"], config_from_dict(gen["kind"], gen["config"])))


def _registry_configs(entry) -> tuple[ModuleConfig, ModuleConfig]:
    """(tokenizer, generator) kinds and configs of a registry entry."""
    gen_cfg = preset_config(entry.generator_kind, entry.generator_preset)
    if entry.family == "llamagen":  # token grid follows the checkpoint's resolution
        gen_cfg = dataclasses.replace(gen_cfg, block_size=(entry.image_size // 16) ** 2)
    return ((entry.tokenizer_kind, preset_config(entry.tokenizer_kind, entry.tokenizer_preset)),
            (entry.generator_kind, gen_cfg))


def estimate_bundle_bytes(name_or_path: str | Path, dtype: torch.dtype = torch.float32,
                          quant: str = "none") -> int | None:
    """The tokenizer's and the generator's bytes once loaded, from their configs alone (nothing is
    read but a manifest): the model cache makes room with it before a load, so two models never share
    a device that holds one. Text encoders, control adapters and draft stores are not counted (a lower
    bound: the cache recounts after loading). None when the name does not resolve (the load says why)."""
    from .quantize import planned_bytes
    name = str(name_or_path)
    try:
        bundled = bundled_manifests()
        if name in bundled or (name not in REGISTRY and (Path(name).suffix == ".json" or Path(name).is_dir())):
            configs = _manifest_configs(_read_json(_manifest_file(Path(bundled.get(name, name)))))
        else:
            configs = _registry_configs(get_entry(name))
    except (ArnodesError, KeyError, OSError, TypeError, ValueError):
        return None
    (tok_kind, tok_cfg), (gen_kind, gen_cfg) = configs
    tokenizer = build_on_meta(lambda: _kind(tok_kind)[0](tok_cfg))
    generator = build_on_meta(lambda: _kind(gen_kind)[0](gen_cfg))
    return planned_bytes(tokenizer, "none") + planned_bytes(generator, quant, dtype)


def _text_encoder(entry: Any, gen_cfg: Any, base_dir: Path | None, source: str, device, dtype: torch.dtype,
                  models_dir, offline):
    """The text encoder a text-to-image generator is trained with; refused on a class-conditional one, and
    required, with features as wide as the generator's captions, on a text-to-image one."""
    from .text.encoders import load_prompt_encoder
    t2i = bool(getattr(gen_cfg, "is_t2i", False))
    if entry is None and t2i:
        raise CheckpointError(f"{source}: the generator is text-to-image but no 'text_encoder' is given")
    if entry is not None and not t2i:
        raise CheckpointError(f"{source}: a 'text_encoder' is given but the generator is class-conditional")
    encoder = load_prompt_encoder(entry, base_dir, source, device, dtype, models_dir, offline)
    if encoder is not None and encoder.dim != gen_cfg.caption_dim:
        raise CheckpointError(f"{source}: the text encoder's features are {encoder.dim} wide; the generator takes "
                              f"caption_dim {gen_cfg.caption_dim}")
    return encoder


def _draft_store(entry: Any, gen_cfg: Any, path: Path, device) -> DraftStore | None:
    """The raster generator's draft store (speculative decoding), checked against its grid and vocabulary."""
    if entry is None:
        return None
    num_classes = None if getattr(gen_cfg, "is_t2i", False) else gen_cfg.num_classes
    return load_draft_store(entry, path.parent, str(path), gen_cfg.block_size, gen_cfg.vocab_size, num_classes,
                            device)


def _styles(data: dict, gen_cfg: Any, path: Path) -> tuple[str, ...]:
    """The manifest's style names, which must match the generator's style embedding."""
    styles = data.get("styles", [])
    if not isinstance(styles, list) or not all(isinstance(s, str) and s.strip() for s in styles):
        raise CheckpointError(f"{path}: 'styles' must be a list of names")
    if len(styles) != getattr(gen_cfg, "num_styles", 0):
        raise CheckpointError(f"{path}: {len(styles)} style names for a generator with "
                              f"{getattr(gen_cfg, 'num_styles', 0)} styles")
    if any(s.casefold() == ANY_STYLE for s in styles):
        raise CheckpointError(f"{path}: {ANY_STYLE!r} is reserved for the classifier-free style")
    return tuple(styles)


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise MissingFileError(f"model manifest not found: {path}")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: a model manifest must be a JSON object")
    return data


def load_bundle(name_or_path: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                models_dir: str | Path | None = None, offline: bool | None = None,
                quant: str = "none") -> ModelBundle:
    """Load a registry model, a bundled model, or a manifest file/directory.

    The tokenizer's weights stay float32 and it encodes in float32; ``dtype`` and ``quant``
    (a name from ``quantize.QUANT_MODES``) apply to the generator, and a bfloat16 bundle also decodes
    under bfloat16 autocast (tasks.decode).
    """
    from .quantize import check_supported
    check_supported(quant, device)  # refuse before any file is read
    name = str(name_or_path)
    bundled = bundled_manifests()
    if name in bundled:
        return load_manifest(bundled[name], device, dtype, quant, models_dir, offline)
    if name not in REGISTRY and (Path(name).suffix == ".json" or Path(name).is_dir()):
        return load_manifest(Path(name), device, dtype, quant, models_dir, offline)
    entry = get_entry(name)
    tok_path = resolve_file(entry.tokenizer_file, entry.hf_repo, models_dir, offline)
    gen_path = resolve_file(entry.generator_file, entry.hf_repo, models_dir, offline)
    (_, tok_cfg), (_, gen_cfg) = _registry_configs(entry)
    text = _text_encoder(entry.text_encoder, gen_cfg, None, entry.name, device, dtype, models_dir, offline)
    tokenizer = load_module_file(entry.tokenizer_kind, tok_cfg, tok_path, device, torch.float32)
    generator = load_generator_file(entry.generator_kind, gen_cfg, gen_path, device, dtype, quant)
    return ModelBundle(name=entry.name, family=entry.family, tokenizer=tokenizer, generator=generator,
                       classes=None if entry.classes is None else load_class_names(entry.classes),
                       image_size=entry.image_size, defaults=dict(entry.defaults), text_encoder=text)
