"""The T5 text encoder of LlamaGen t2i, through ``transformers`` (never re-implemented here).

LlamaGen t2i conditions on the last hidden state of flan-t5-xl's encoder (width 2048) over a caption
of 120 tokens: the tokenizer pads to 120 (``padding='max_length'``), truncates longer prompts, and adds
the end-of-sequence token, exactly the call of the official ``T5Embedder.get_text_embeddings``. A prompt
that does not fit is truncated with a warning naming it.

Where the encoder comes from: a folder in the style of ``save_pretrained`` (config.json, a tokenizer,
the weights) given as a path, or found as ``<models dir>/flan-t5-xl``, or the Hugging Face cache of
``google/flan-t5-xl``; offline (``HF_HUB_OFFLINE=1``) only what is on disk is used. A missing file is
one :class:`MissingFileError` naming the file, where it was looked for and how to get it.

Text cleaning: encoders loaded as ``transformers`` folders (``load_text_encoder``: a released name such
as flan-t5-xl, or any ``save_pretrained`` folder, the form LlamaGen-T2I's encoder comes in) clean prompts
as the official sampler does, ``clean_caption`` twice (``caption_cleaning.py``: the same rules without
ftfy / BeautifulSoup, checked against the official outputs); an encoder with its own tokenizer file
(the bundled model's, whose normaliser does its own work) only lower-cases and strips. ``preprocess``
replaces either.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from ..errors import CheckpointError, InvalidInputError, MissingFileError
from ..resolve import default_models_dir, hub_offline
from .caption_cleaning import clean_prompt

logger = logging.getLogger(__name__)

MAX_LENGTH = 120  # caption tokens: sample_t2i.py --t5-feature-max-len, the t2i models' cls_token_num


@dataclass(frozen=True)
class TextEncoderEntry:
    name: str
    hf_repo: str
    dim: int  # feature width = the generator's caption_dim


TEXT_ENCODERS: dict[str, TextEncoderEntry] = {
    "flan-t5-xl": TextEncoderEntry("flan-t5-xl", "google/flan-t5-xl", 2048),
}

CONFIG_FILE = "config.json"
TOKENIZER_FILES = ("tokenizer.json", "spiece.model")  # either one
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


def default_preprocess(text: str) -> str:
    """The official embedder's form without caption cleaning: lower case, stripped."""
    return text.lower().strip()


class T5TextEncoder:
    """A ``transformers`` T5 encoder and its tokenizer: prompts -> (features (B, T, C), mask (B, T))."""

    def __init__(self, model: nn.Module, tokenizer: Any = None, max_length: int = MAX_LENGTH,
                 preprocess: Callable[[str], str] | None = default_preprocess, name: str = "t5") -> None:
        if max_length < 1:
            raise InvalidInputError(f"max_length must be >= 1, got {max_length!r}")
        self.model = model.eval().requires_grad_(False)
        self.tokenizer, self.max_length, self.preprocess, self.name = tokenizer, max_length, preprocess, name

    @classmethod
    def from_config(cls, config: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor] | None = None,
                    tokenizer: Any = None, **kw) -> "T5TextEncoder":
        """An encoder from a T5 config dict (config.json's content) and, optionally, its state dict (strict)."""
        from transformers import T5Config, T5EncoderModel
        model = T5EncoderModel(T5Config(**dict(config)))
        if state_dict is not None:
            result = model.load_state_dict(dict(state_dict), strict=False)
            if result.missing_keys or result.unexpected_keys:
                raise CheckpointError(f"T5 encoder weights do not match the config: missing {result.missing_keys[:8]}, "
                                      f"unexpected {result.unexpected_keys[:8]}")
        return cls(model, tokenizer, **kw)

    @property
    def dim(self) -> int:
        return int(self.model.config.d_model)

    @property
    def module(self) -> nn.Module:
        """The weights, for callers that measure or move a model's modules (caches, ComfyUI)."""
        return self.model

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "T5TextEncoder":
        self.model.to(device=device, dtype=dtype)
        return self

    def tokenize(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts -> (input ids (B, max_length), attention mask (B, max_length)), right-padded; a prompt
        longer than ``max_length`` tokens (end token included) is cut, with a warning."""
        if self.tokenizer is None:
            raise InvalidInputError(f"text encoder {self.name!r} has no tokenizer: pass token ids to encode_ids")
        texts = [self.preprocess(str(p)) if self.preprocess else str(p) for p in prompts]
        if not texts:
            raise InvalidInputError("no prompt to encode")
        lengths = [len(ids) for ids in self.tokenizer(texts, add_special_tokens=True)["input_ids"]]
        for i, n in enumerate(lengths):
            if n > self.max_length:
                logger.warning("prompt %d is %d tokens long; the text encoder takes %d, so it was truncated to "
                               "%r...", i, n, self.max_length, texts[i][:60])
        out = self.tokenizer(texts, max_length=self.max_length, padding="max_length", truncation=True,
                             return_attention_mask=True, add_special_tokens=True, return_tensors="pt")
        return out["input_ids"], out["attention_mask"]

    @torch.no_grad()
    def encode_ids(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Token ids and mask (B, T) -> the encoder's last hidden state (B, T, C)."""
        if input_ids.ndim != 2 or tuple(attention_mask.shape) != tuple(input_ids.shape):
            raise InvalidInputError(f"input ids {tuple(input_ids.shape)} and mask {tuple(attention_mask.shape)}: "
                                    f"need two (B, T) tensors")
        dev = self.device
        return self.model(input_ids=input_ids.to(dev), attention_mask=attention_mask.to(dev))["last_hidden_state"]

    def encode(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts -> (features (B, max_length, C), right-padded attention mask (B, max_length))."""
        ids, mask = self.tokenize(prompts)
        return self.encode_ids(ids, mask), mask.to(self.device)


def _missing(what: str, looked: list[str], entry: TextEncoderEntry | None, models_dir: Path,
             reason: str = "") -> MissingFileError:
    if entry is not None:
        how = (f"download the files of https://huggingface.co/{entry.hf_repo} (config.json, spiece.model or "
               f"tokenizer.json, the model weights) into {models_dir / entry.name}, or into the Hugging Face cache "
               f"with `huggingface-cli download {entry.hf_repo}`")
    else:
        how = "save the encoder there with transformers' save_pretrained (model and tokenizer)"
    why = f" ({reason})" if reason else ""
    return MissingFileError(f"text encoder file {what} not found; looked in {', '.join(looked)}{why}; to get it, {how}")


def _complete(folder: Path) -> str | None:
    """The first required file a text-encoder folder lacks, or None when it has them all."""
    if not (folder / CONFIG_FILE).is_file():
        return CONFIG_FILE
    if not any((folder / f).is_file() for f in TOKENIZER_FILES):
        return " or ".join(TOKENIZER_FILES)
    weights = [f for f in WEIGHT_FILES if (folder / f).is_file()]
    if not weights:
        return " or ".join(WEIGHT_FILES)
    if weights[0].endswith(".index.json"):
        try:
            shards = sorted(set(json.loads((folder / weights[0]).read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{folder / weights[0]}: not a readable weight index ({e})") from None
        absent = [s for s in shards if not (folder / s).is_file()]
        if absent:
            return absent[0]
    return None


def resolve_text_encoder(name_or_path: str | Path = "flan-t5-xl", models_dir: str | Path | None = None,
                         offline: bool | None = None) -> Path:
    """The folder holding a text encoder: a path, ``<models dir>/<name>``, or the Hugging Face cache of a
    known name (downloaded there only when not offline)."""
    models_dir = Path(models_dir).expanduser() if models_dir is not None else default_models_dir()
    entry = TEXT_ENCODERS.get(str(name_or_path))
    if entry is None:
        folder = Path(name_or_path).expanduser()
        if not folder.is_dir():
            raise InvalidInputError(f"unknown text encoder {str(name_or_path)!r}: give a folder or one of "
                                    f"{sorted(TEXT_ENCODERS)}")
        lacking = _complete(folder)
        if lacking is not None:
            raise _missing(repr(lacking), [str(folder)], None, models_dir)
        return folder
    local = models_dir / entry.name
    lacking = _complete(local) if local.is_dir() else CONFIG_FILE
    if lacking is None:
        return local
    offline = hub_offline() if offline is None else offline
    mode = " (offline: HF_HUB_OFFLINE=1)" if offline else ""
    looked = [str(local), f"the Hugging Face cache for {entry.hf_repo}{mode}"]
    try:
        from huggingface_hub import snapshot_download
        folder = Path(snapshot_download(entry.hf_repo, local_files_only=offline,
                                        allow_patterns=["*.json", "spiece.model", "*.safetensors"]))
    except Exception as e:  # noqa: BLE001 - any hub failure becomes the one clear error below
        raise _missing(repr(lacking), looked, entry, models_dir,
                       f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    lacking = _complete(folder)
    if lacking is not None:
        raise _missing(repr(lacking), looked, entry, models_dir, f"the cached snapshot {folder} is incomplete")
    return folder


def load_text_encoder(name_or_path: str | Path = "flan-t5-xl", device: torch.device | str = "cpu",
                      dtype: torch.dtype = torch.float32, models_dir: str | Path | None = None,
                      offline: bool | None = None, max_length: int = MAX_LENGTH) -> T5TextEncoder:
    """Load a T5 encoder and its tokenizer (offline-safe; see :func:`resolve_text_encoder`); prompts are
    cleaned as the official sampler cleans them."""
    folder = resolve_text_encoder(name_or_path, models_dir, offline)
    import transformers
    from transformers import AutoTokenizer, T5EncoderModel
    new_api = tuple(int(x) for x in transformers.__version__.split(".")[:2] if x.isdigit()) >= (4, 56)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        model = T5EncoderModel.from_pretrained(str(folder), local_files_only=True,
                                               **{"dtype" if new_api else "torch_dtype": dtype})
    except (OSError, ValueError, RuntimeError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"{folder}: the text encoder could not be loaded ({first})") from e
    return T5TextEncoder(model.to(device=device, dtype=dtype), tokenizer, max_length, preprocess=clean_prompt,
                         name=str(name_or_path))


# ---- a model's "text_encoder" entry of kind "t5" (text/encoders.py) ---------------------------------
ENTRY_FIELDS = ("name", "folder", "file", "config", "tokenizer", "max_length")
T5_SPECIAL_TOKENS = {"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"}


def _relative(base_dir: Path | None, name: str) -> Path:
    path = Path(name).expanduser()
    return path if path.is_absolute() or base_dir is None else base_dir / path


def from_entry(fields: Mapping[str, Any], base_dir: Path | None, models_dir: str | Path | None,
               offline: bool | None, device: torch.device | str, dtype: torch.dtype,
               source: str) -> T5TextEncoder:
    """A "t5" entry: ``{"name": "flan-t5-xl"}`` (a released encoder, from ``<models dir>/<name>`` or the
    Hugging Face cache), ``{"folder": ...}`` (a ``save_pretrained`` folder), or ``{"file": weights,
    "config": {T5 config}, "tokenizer": "tokenizer.json"}`` (weights and a ``tokenizers`` file next to the
    manifest, T5's special tokens); optional ``"max_length"`` (caption tokens, default 120)."""
    unknown = sorted(set(fields) - set(ENTRY_FIELDS))
    if unknown:
        raise CheckpointError(f"{source}: t5 text_encoder has unknown fields {unknown}; known: "
                              f"{['kind', 'left_padding', *ENTRY_FIELDS]}")
    forms = [k for k in ("name", "folder", "file") if k in fields]
    if len(forms) != 1:
        raise CheckpointError(f"{source}: a t5 text_encoder gives exactly one of 'name', 'folder' or 'file'; "
                              f"got {forms or 'none'}")
    max_length = fields.get("max_length", MAX_LENGTH)
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
        raise CheckpointError(f"{source}: text_encoder 'max_length' must be a positive integer, got {max_length!r}")
    if "name" in fields:
        if fields["name"] not in TEXT_ENCODERS:
            raise CheckpointError(f"{source}: unknown t5 text encoder {fields['name']!r}; known: "
                                  f"{sorted(TEXT_ENCODERS)} (or give a 'folder')")
        return load_text_encoder(fields["name"], device, dtype, models_dir, offline, max_length)
    if "folder" in fields:
        return load_text_encoder(_relative(base_dir, str(fields["folder"])), device, dtype, models_dir, offline,
                                 max_length)
    config, tok = fields.get("config"), fields.get("tokenizer")
    if not isinstance(config, Mapping) or not isinstance(tok, str):
        raise CheckpointError(f"{source}: a t5 text_encoder 'file' needs 'config' (a T5 config object) and "
                              f"'tokenizer' (a tokenizer.json file)")
    from ..checkpoint import read_checkpoint, unwrap_state_dict
    weights, tok_path = _relative(base_dir, str(fields["file"])), _relative(base_dir, tok)
    state = unwrap_state_dict(read_checkpoint(weights), source=str(weights))
    if not tok_path.is_file():
        raise MissingFileError(f"text encoder tokenizer {str(tok_path)!r} not found (named by {source})")
    from transformers import PreTrainedTokenizerFast
    try:
        tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(tok_path), **T5_SPECIAL_TOKENS)
    except Exception as e:  # noqa: BLE001 - whatever the tokenizers library raises for a bad file
        raise CheckpointError(f"{tok_path}: not a readable tokenizer.json ({type(e).__name__}: {e})") from None
    try:
        encoder = T5TextEncoder.from_config(config, state, tokenizer, max_length=max_length, name=str(weights))
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{source}: the t5 text_encoder config is not a T5 config ({e})") from None
    return encoder.to(device, dtype)


def present(fields: Mapping[str, Any], models_dir: str | Path | None = None) -> bool:
    """Whether a named released encoder is complete on disk (the models folder or the Hugging Face
    cache), without the network; entries with their own files: True (the loader names a missing one)."""
    if "name" not in fields:
        return True
    entry = TEXT_ENCODERS.get(str(fields["name"]))
    if entry is None:
        return False
    folder = (Path(models_dir).expanduser() if models_dir is not None else default_models_dir()) / entry.name
    try:
        if folder.is_dir() and _complete(folder) is None:
            return True
        from huggingface_hub import snapshot_download
        cached = Path(snapshot_download(entry.hf_repo, local_files_only=True,
                                        allow_patterns=["*.json", "spiece.model", "*.safetensors"]))
        return _complete(cached) is None
    except Exception:  # noqa: BLE001 - nothing usable in an absent or unreadable cache
        return False


def fetch_hint(fields: Mapping[str, Any], models_dir: str | Path | None = None) -> str:
    """Where a named released encoder comes from and where it goes."""
    entry = TEXT_ENCODERS.get(str(fields.get("name")))
    if entry is None:
        return ""
    folder = (Path(models_dir).expanduser() if models_dir is not None else default_models_dir()) / entry.name
    return (f"the text encoder {entry.name}: the files of https://huggingface.co/{entry.hf_repo} (config.json, "
            f"spiece.model or tokenizer.json, the weights) into {folder}, or into the Hugging Face cache with "
            f"`huggingface-cli download {entry.hf_repo}`")
