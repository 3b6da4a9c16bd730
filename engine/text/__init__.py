"""Text conditioning for text-to-image generators: a text encoder wrapper and caption padding.

- :mod:`.t5`: the T5 encoder LlamaGen t2i was trained with (flan-t5-xl), through ``transformers``
  (load from a models folder or the Hugging Face cache, tokenize with truncation, encode);
- :mod:`.captions`: encoder output + attention mask -> the caption condition a generator takes
  (LlamaGen's left padding), and prompts -> a :class:`..conditioning.TextCondition`;
- :mod:`.encoders`: the encoder a loaded model carries (a manifest's "text_encoder" entry, one row
  per encoder kind) behind a :class:`PromptEncoder` that pads and remembers encoded prompts.

Nothing here is imported with the engine: ``transformers`` loads only when an encoder is built.
"""
from __future__ import annotations

from .captions import caption_condition, encode_prompts
from .encoders import TEXT_ENCODER_KINDS, PromptEncoder, load_prompt_encoder
from .t5 import TEXT_ENCODERS, T5TextEncoder, load_text_encoder, resolve_text_encoder

__all__ = ["TEXT_ENCODERS", "TEXT_ENCODER_KINDS", "PromptEncoder", "T5TextEncoder", "caption_condition",
           "encode_prompts", "load_prompt_encoder", "load_text_encoder", "resolve_text_encoder"]
