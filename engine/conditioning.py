"""Class or text conditioning and classifier-free-guidance settings (the AR_COND graph type)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from .errors import InvalidInputError

if TYPE_CHECKING:
    from .control import ControlCondition

CfgSchedule = Literal["linear", "constant"]


@dataclass(frozen=True, eq=False)
class TextCondition:
    """Encoded prompts for a text-to-image model, one row per image (torch-free here: tensors are duck-typed).

    ``embeddings`` (B, T, C): the caption features exactly as the generator takes them, already padded by
    the model's convention (LlamaGen t2i: left padding, padded rows zero; ``text.captions.caption_condition``);
    ``mask`` (B, T): 1 where a caption position holds a real token. ``negative`` / ``negative_mask``: an
    encoded negative prompt for the unconditional branch; None = the model's own null caption (LlamaGen's
    learned ``uncond_embedding``). ``prompts``: the texts, for display and metadata only.
    Equality is identity: equal prompts encoded by different encoders are different conditions.
    """

    embeddings: Any
    mask: Any
    negative: Any = None
    negative_mask: Any = None
    prompts: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        emb, mask = self.embeddings, self.mask
        if (getattr(emb, "ndim", None) != 3 or getattr(mask, "ndim", None) != 2
                or tuple(mask.shape) != tuple(emb.shape[:2])):
            raise InvalidInputError(f"text conditioning needs embeddings (B, T, C) and a mask (B, T); got "
                                    f"{_shape(emb)} and {_shape(mask)}")
        if emb.shape[0] < 1:
            raise InvalidInputError("text conditioning needs at least one prompt")
        if (self.negative is None) != (self.negative_mask is None):
            raise InvalidInputError("a negative prompt needs both its embeddings and its mask")
        if self.negative is not None and (tuple(self.negative.shape) != tuple(emb.shape)
                                          or tuple(self.negative_mask.shape) != tuple(mask.shape)):
            raise InvalidInputError(f"negative prompt {_shape(self.negative)} / mask {_shape(self.negative_mask)} "
                                    f"must match the prompt's {_shape(emb)} / {_shape(mask)}")
        if self.prompts and len(self.prompts) != emb.shape[0]:
            raise InvalidInputError(f"{len(self.prompts)} prompt texts for {emb.shape[0]} encoded prompts")

    @property
    def batch(self) -> int:
        return int(self.embeddings.shape[0])

    def repeat(self, n: int) -> "TextCondition":
        """Each prompt repeated n times (rows stay grouped per prompt, like ``Conditioning.repeat``)."""
        rep = (lambda t: None if t is None else t.repeat_interleave(n, dim=0))
        return TextCondition(rep(self.embeddings), rep(self.mask), rep(self.negative), rep(self.negative_mask),
                             tuple(p for p in self.prompts for _ in range(n)))


def _shape(t: Any) -> str:
    return str(tuple(t.shape)) if hasattr(t, "shape") else type(t).__name__


@dataclass(frozen=True)
class Conditioning:
    """What to generate: one class id per image, or one encoded prompt per image (``text``), and how
    strongly to guide towards it.

    ``cfg`` follows each family's own convention (VAR: ``(1+t)cond - t*uncond`` with
    ``t`` ramped by ``schedule``; LlamaGen: ``uncond + s*(cond-uncond)``, guidance
    only when ``cfg > 1``). ``cfg_interval`` is LlamaGen's: -1 = guide every token.
    ``control`` optionally adds a control adapter's condition (control/__init__.py); every task
    then runs under it. Class-conditional models take ``class_ids``, text-to-image models ``text``;
    exactly one of the two is given.
    """

    class_ids: tuple[int, ...] = ()
    cfg: float = 1.5
    schedule: CfgSchedule = "linear"
    cfg_interval: int = -1
    negative_class_ids: tuple[int, ...] | None = None  # None = the null class
    class_names: tuple[str, ...] = field(default=(), compare=False)
    style_ids: tuple[int, ...] | None = None  # one per image, for models with styles; None = "any"
    style_names: tuple[str, ...] = field(default=(), compare=False)
    control: "ControlCondition | None" = field(default=None, compare=False)
    text: TextCondition | None = None

    def __post_init__(self) -> None:
        if not self.class_ids and self.text is None:
            raise InvalidInputError("Conditioning needs at least one class id (or an encoded prompt)")
        if self.class_ids and self.text is not None:
            raise InvalidInputError("Conditioning takes class ids or a prompt, not both")
        if self.text is not None and (self.negative_class_ids is not None or self.style_ids is not None):
            raise InvalidInputError("a text condition takes no negative class ids or styles (use a negative prompt)")
        if self.cfg < 0:
            raise InvalidInputError(f"cfg must be >= 0, got {self.cfg!r}")
        if self.schedule not in ("linear", "constant"):
            raise InvalidInputError(f"unknown cfg schedule {self.schedule!r}; expected 'linear' or 'constant'")
        if self.negative_class_ids is not None and len(self.negative_class_ids) != len(self.class_ids):
            raise InvalidInputError("negative_class_ids must have one entry per class id")
        if self.style_ids is not None and len(self.style_ids) != len(self.class_ids):
            raise InvalidInputError("style_ids must have one entry per class id")

    @property
    def batch(self) -> int:
        return self.text.batch if self.text is not None else len(self.class_ids)

    def repeat(self, n: int) -> "Conditioning":
        """Each class (or prompt) repeated n times (a batch of n images per class)."""
        ids = tuple(c for c in self.class_ids for _ in range(n))
        neg = None if self.negative_class_ids is None else tuple(c for c in self.negative_class_ids for _ in range(n))
        names = tuple(c for c in self.class_names for _ in range(n))
        styles = None if self.style_ids is None else tuple(s for s in self.style_ids for _ in range(n))
        style_names = tuple(s for s in self.style_names for _ in range(n))
        control = None if self.control is None else self.control.repeat(n)
        text = None if self.text is None else self.text.repeat(n)
        return dataclasses.replace(self, class_ids=ids, negative_class_ids=neg, class_names=names, style_ids=styles,
                                   style_names=style_names, control=control, text=text)
