"""A tiny text-to-image model for tests, made offline from the parity fixtures.

- generator: the LlamaGen t2i parity GPT (llamagen_t2i/tiny_a: vocab 256, 4x4 tokens, 120 caption
  positions of width 32);
- tokenizer: the LlamaGen c2i parity VQ (llamagen/tiny_a: a 256-code codebook and a 4x4 grid at 64 px,
  so it decodes the t2i GPT's tokens);
- text encoder: the parity tiny T5 (width 32 = the GPT's caption_dim) with a word-level T5-style
  tokenizer (``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2, words ``w0`` .. ``w60``) written as tokenizer.json,
  since the real T5 tokenizer needs a download.

The folder also holds a class-conditional model, the c2i parity GPT with the same VQ, for the
"wrong kind of condition" checks. It sits at a stable path so the process-wide model cache loads
each model once.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from functools import lru_cache
from pathlib import Path

TESTS_DIR = Path(__file__).resolve().parent
REFERENCE = TESTS_DIR / "fixtures" / "reference"
T2I_DIR, C2I_DIR = REFERENCE / "llamagen_t2i" / "tiny_a", REFERENCE / "llamagen" / "tiny_a"
TINY_T2I, TINY_C2I = "tiny-t2i.json", "tiny-c2i.json"
CLASSES = ["red heart", "cat face", "sun", "star", "fire", "rainbow", "snowflake", "pizza", "dog face", "moon"]
WORDS = 61  # the tiny T5 has 64 embeddings: 3 special tokens and 61 words


def word_tokenizer_json(words: int = WORDS) -> str:
    """A T5-shaped word-level tokenizer (lower-case words w0.., an end token after every prompt) as JSON."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{f"w{i}": i + 3 for i in range(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return tok.to_str()


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def t2i_manifest(tokenizer_file: str = "tiny_t5_tokenizer.json") -> dict:
    """The tiny text-to-image manifest (fixture files by absolute path, the tokenizer next to it)."""
    from arnodes.engine.models.llamagen import LlamaGenConfig
    from arnodes.engine.tokenizers.vq import VQConfig

    t2i = json.loads((T2I_DIR / "config.json").read_text())
    c2i = json.loads((C2I_DIR / "config.json").read_text())
    vq = VQConfig.from_official(c2i["vq_model_args"], c2i.get("vq_encoder_decoder_kwargs"), c2i["image_size"])
    return {
        "name": "tiny-t2i", "family": "llamagen", "image_size": c2i["image_size"],
        "tokenizer": {"kind": "vq", "file": str(C2I_DIR / "vq.safetensors"), "config": dataclasses.asdict(vq)},
        "generator": {"kind": "llamagen", "file": str(T2I_DIR / "gpt.safetensors"),
                      "config": dataclasses.asdict(LlamaGenConfig.from_official(t2i["gpt_model_args"]))},
        "text_encoder": {"kind": "t5", "file": str(T2I_DIR / "t5_tiny.safetensors"), "config": t2i["t5"]["config"],
                         "tokenizer": tokenizer_file},
        "defaults": {"cfg": 4.0, "top_k": 0, "top_p": 1.0, "temperature": 1.0},
    }


def c2i_manifest() -> dict:
    from arnodes.engine.models.llamagen import LlamaGenConfig
    from arnodes.engine.tokenizers.vq import VQConfig

    c2i = json.loads((C2I_DIR / "config.json").read_text())
    vq = VQConfig.from_official(c2i["vq_model_args"], c2i.get("vq_encoder_decoder_kwargs"), c2i["image_size"])
    return {
        "name": "tiny-c2i", "family": "llamagen", "image_size": c2i["image_size"],
        "tokenizer": {"kind": "vq", "file": str(C2I_DIR / "vq.safetensors"), "config": dataclasses.asdict(vq)},
        "generator": {"kind": "llamagen", "file": str(C2I_DIR / "gpt.safetensors"),
                      "config": dataclasses.asdict(LlamaGenConfig.from_official(c2i["gpt_model_args"]))},
        "classes": "tiny_classes.json", "defaults": {},
    }


@lru_cache(maxsize=1)
def tiny_text_models_dir() -> Path:
    """A models folder with ``tiny-t2i.json`` (text-to-image) and ``tiny-c2i.json`` (class-conditional)."""
    key = hashlib.sha256(f"{TESTS_DIR}|{WORDS}|v1".encode()).hexdigest()[:12]
    out = Path(tempfile.gettempdir()) / f"arnodes-tiny-text-models-{key}"
    out.mkdir(parents=True, exist_ok=True)
    _write(out / "tiny_t5_tokenizer.json", word_tokenizer_json())
    _write(out / "tiny_classes.json", json.dumps(CLASSES))
    _write(out / TINY_T2I, json.dumps(t2i_manifest(), indent=1))
    _write(out / TINY_C2I, json.dumps(c2i_manifest(), indent=1))
    return out


# ---- a second encoder kind, for the table's test: one module (this one) + one row ----------------------
class HashEncoder:
    """Deterministic made-up caption features: each word's features come from a generator seeded by it."""

    def __init__(self, dim: int, length: int = 120) -> None:
        import torch
        self.dim, self.length = dim, length
        self.module = torch.nn.Module()
        self.module.register_buffer("scale", torch.ones(dim))

    def to(self, device=None, dtype=None) -> "HashEncoder":
        self.module.to(device=device, dtype=dtype)
        return self

    def encode(self, prompts):
        import torch
        feats = torch.zeros(len(prompts), self.length, self.dim)  # (B, T, C)
        mask = torch.zeros(len(prompts), self.length, dtype=torch.long)  # (B, T), right-padded
        for i, prompt in enumerate(prompts):
            words = prompt.lower().split()[: self.length]
            for j, word in enumerate(words):
                seed = int(hashlib.sha256(word.encode()).hexdigest()[:8], 16)
                feats[i, j] = torch.randn(self.dim, generator=torch.Generator().manual_seed(seed))
            mask[i, : len(words)] = 1
        return feats * self.module.scale, mask


def from_entry(fields, base_dir, models_dir, offline, device, dtype, source) -> HashEncoder:
    """The "hash" kind's loader (registered by the test that uses it)."""
    return HashEncoder(int(fields["dim"])).to(device, dtype)
