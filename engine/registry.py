"""Known models: name -> family, presets, checkpoint files and where to get them.

Names are looked up exactly. A bundle is a tokenizer plus a generator (plus, for a text-to-image
generator, its text encoder); released checkpoints are resolved from a local models directory or
the Hugging Face hub (see :mod:`.resolve`), the bundled emoji model from ``weights/``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .errors import UnknownNameError

PACKAGE_ROOT = Path(__file__).resolve().parent.parent
WEIGHTS_DIR = PACKAGE_ROOT / "weights"
DEFAULT_MODEL = "emoji-var"
DEFAULT_TEXT_MODEL = "emoji-text"  # the bundled text-to-image model: the default when a prompt comes without a model


@dataclass(frozen=True)
class ModelEntry:
    name: str
    family: str  # "var" | "llamagen"
    tokenizer_kind: str  # "msvq" | "vq"
    tokenizer_preset: str
    generator_kind: str  # "var" | "llamagen"
    generator_preset: str
    image_size: int
    tokenizer_file: str
    generator_file: str
    hf_repo: str | None  # None: shipped with arnodes
    classes: str | None = "imagenet"  # None: a text-to-image model
    defaults: dict = field(default_factory=dict, compare=False, hash=False)
    description: str = ""
    # a manifest's "text_encoder" entry (text/encoders.py), e.g. {"kind": "t5", "name": "flan-t5-xl"}
    text_encoder: dict | None = field(default=None, compare=False, hash=False)


def _var(depth: int, image_size: int = 256) -> ModelEntry:
    return ModelEntry(
        name=f"var-d{depth}", family="var", tokenizer_kind="msvq",
        tokenizer_preset="vae_ch160v4096z32" if image_size == 256 else f"vae_ch160v4096z32-{image_size}",
        generator_kind="var", generator_preset=f"var-d{depth}", image_size=image_size,
        tokenizer_file="vae_ch160v4096z32.pth", generator_file=f"var_d{depth}.pth", hf_repo="FoundationVision/var",
        defaults={"cfg": 4.0, "top_k": 900, "top_p": 0.95},
        description=f"VAR depth {depth}, ImageNet {image_size}px class-conditional (official release)")


def _llamagen(size: str, image_size: int) -> ModelEntry:
    return ModelEntry(
        name=f"llamagen-c2i-{size.lower()}-{image_size}", family="llamagen", tokenizer_kind="vq",
        tokenizer_preset="vq_ds16_c2i", generator_kind="llamagen", generator_preset=f"GPT-{size}",
        image_size=image_size, tokenizer_file="vq_ds16_c2i.pt", generator_file=f"c2i_{size}_{image_size}.pt",
        hf_repo="FoundationVision/LlamaGen",
        defaults={"cfg": 4.0 if image_size == 256 else 1.75, "top_k": 0, "top_p": 1.0, "temperature": 1.0},
        description=f"LlamaGen GPT-{size} class-to-image {image_size}px (official release)")


def _llamagen_t2i(stage: int, image_size: int) -> ModelEntry:
    """The released text-to-image GPT-XL (stage 1: 256px, stage 2: fine-tuned at 512px) with its VQ and
    the flan-t5-xl encoder it was trained with; sampling defaults of the official sample_t2i.py."""
    return ModelEntry(
        name=f"llamagen-t2i-xl-{image_size}", family="llamagen", tokenizer_kind="vq", tokenizer_preset="vq_ds16_t2i",
        generator_kind="llamagen", generator_preset="GPT-XL-t2i", image_size=image_size,
        tokenizer_file="vq_ds16_t2i.pt", generator_file=f"t2i_XL_stage{stage}_{image_size}.pt",
        hf_repo="peizesun/llamagen_t2i", classes=None, text_encoder={"kind": "t5", "name": "flan-t5-xl"},
        defaults={"cfg": 7.5, "top_k": 1000, "top_p": 1.0, "temperature": 1.0},
        description=f"LlamaGen GPT-XL text-to-image {image_size}px, flan-t5-xl prompts (official release)")


_ENTRIES = [
    *(_var(d) for d in (16, 20, 24, 30)),
    _var(36, image_size=512),
    _llamagen("B", 256), _llamagen("B", 384), _llamagen("L", 256), _llamagen("L", 384),
    _llamagen("XL", 384), _llamagen("XXL", 384), _llamagen("3B", 384),
    _llamagen_t2i(1, 256), _llamagen_t2i(2, 512),
]
REGISTRY: dict[str, ModelEntry] = {e.name: e for e in _ENTRIES}


def get_entry(name: str) -> ModelEntry:
    try:
        return REGISTRY[name]
    except KeyError:
        raise UnknownNameError(f"unknown model {name!r}; available: {sorted(REGISTRY) + bundled_model_names()}") from None


_bundled_seen: tuple[tuple, dict[str, tuple[Path, dict]]] = ((), {})


def _bundled() -> dict[str, tuple[Path, dict]]:
    """Bundled manifests, name -> (path, parsed JSON); re-read only when ``weights/`` changes (every
    request validates its model choice, and a folder listing plus JSON parses per request add up)."""
    global _bundled_seen
    import json
    try:
        state = (str(WEIGHTS_DIR), WEIGHTS_DIR.stat().st_mtime_ns)
    except OSError:
        return {}
    seen_state, seen = _bundled_seen
    if seen_state == state:
        return seen
    found: dict[str, tuple[Path, dict]] = {}
    for path in sorted(WEIGHTS_DIR.glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and "family" in data and "name" in data and "generator" in data:
            found[str(data["name"])] = (path, data)
    _bundled_seen = (state, found)
    return found


def bundled_manifests() -> dict[str, Path]:
    """Bundled models shipped in ``weights/``: name -> manifest path."""
    return {name: path for name, (path, _) in _bundled().items()}


def bundled_style_names() -> list[str]:
    """Drawing styles of the bundled models (their manifests' "styles"), in order, without repeats."""
    names: list[str] = []
    for _, data in _bundled().values():
        styles = data.get("styles", [])
        names += [s for s in styles if isinstance(s, str) and s not in names] if isinstance(styles, list) else []
    return names


def checkpoint_present(entry: ModelEntry, models_dir: str | Path | None = None) -> bool:
    """Whether a released checkpoint's files are on disk now (the models directory, or the Hugging
    Face cache), its text encoder's too; never touches the network."""
    from .resolve import default_models_dir
    folder = Path(models_dir) if models_dir is not None else default_models_dir()
    if entry.text_encoder is not None:
        from .text.encoders import encoder_present
        if not encoder_present(entry.text_encoder, folder):
            return False
    for filename in (entry.tokenizer_file, entry.generator_file):
        if (folder / filename).is_file():
            continue
        if entry.hf_repo is None:
            return False
        try:
            from huggingface_hub import try_to_load_from_cache
            if not isinstance(try_to_load_from_cache(entry.hf_repo, filename), str):
                return False
        except Exception:  # noqa: BLE001 - an unreadable hub cache holds nothing usable
            return False
    return True


def how_to_fetch(entry: ModelEntry, models_dir: str | Path | None = None) -> str:
    """One sentence: where a released checkpoint's files come from and where they go."""
    from .resolve import default_models_dir
    folder = Path(models_dir) if models_dir is not None else default_models_dir()
    files = f"{entry.tokenizer_file} and {entry.generator_file}"
    source = f"https://huggingface.co/{entry.hf_repo}" if entry.hf_repo else "its publisher"
    encoder = ""
    if entry.text_encoder is not None:
        from .text.encoders import fetch_hint
        hint = fetch_hint(entry.text_encoder, folder)
        encoder = f", and {hint}" if hint else ""
    return (f"download {files} from {source} into {folder}{encoder} (or set ARNODES_MODELS_DIR to the folder "
            f"that has them)")


def bundled_control_names() -> list[str]:
    """Control adapters the bundled models ship (their manifests' "controls"), in order, without repeats."""
    names: list[str] = []
    for _, data in _bundled().values():
        controls = data.get("controls", {})
        names += [c for c in controls if isinstance(c, str) and c not in names] if isinstance(controls, dict) else []
    return names


def manifest_class_spec(data: dict) -> str | None:
    """A manifest's class names (a file, or "imagenet"); None for a text-to-image model, which has a
    "text_encoder" instead. The one rule the loader, the node menus and the app's pickers share."""
    if "classes" in data:
        return None if data["classes"] is None else str(data["classes"])
    return None if data.get("text_encoder") is not None else "imagenet"


def takes_text(name: str) -> bool:
    """Whether a model (registry name, bundled name, or manifest path) is conditioned on prompts,
    read from its entry or manifest without loading it; unknown or unreadable: False."""
    import json
    if name in REGISTRY:
        return REGISTRY[name].text_encoder is not None
    bundled = _bundled()
    if name in bundled:
        return bundled[name][1].get("text_encoder") is not None
    path = Path(name) if Path(name).suffix == ".json" else None
    try:
        data = json.loads(path.read_text(encoding="utf-8")) if path is not None else {}
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("text_encoder") is not None


def bundled_model_names() -> list[str]:
    return sorted(bundled_manifests())


def model_defaults(name: str) -> dict:
    """Recommended sampling settings of a model (cfg, top_k, top_p, ...), without loading it."""
    bundled = _bundled()
    if name in bundled:
        return dict(bundled[name][1].get("defaults", {}))
    return dict(REGISTRY[name].defaults) if name in REGISTRY else {}


def control_preprocessor(name: str, adapter: str, models_dir: str | Path | None = None):
    """How a model's control adapter wants its maps made (e.g. the Canny thresholds it was trained
    with), read from its manifest (bundled, a path, or in the models directory) without loading it;
    the generic Canny defaults when the manifest does not say."""
    import json

    from .control import Preprocessor
    from .resolve import default_models_dir
    path = bundled_manifests().get(name)
    if path is None and Path(name).suffix == ".json":
        path = next((p for p in (Path(name), Path(models_dir or default_models_dir()) / name) if p.is_file()), None)
    try:
        entry = json.loads(path.read_text(encoding="utf-8")).get("controls", {}).get(adapter) if path else None
        return Preprocessor(**entry["preprocessor"])
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        return Preprocessor(type="canny")  # the loader names a broken manifest when it loads it
