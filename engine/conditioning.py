"""Class conditioning and classifier-free-guidance settings (the AR_COND graph type)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from .errors import InvalidInputError

if TYPE_CHECKING:
    from .control import ControlCondition

CfgSchedule = Literal["linear", "constant"]


@dataclass(frozen=True)
class Conditioning:
    """What to generate: one class id per image, and how strongly to guide towards it.

    ``cfg`` follows each family's own convention (VAR: ``(1+t)cond - t*uncond`` with
    ``t`` ramped by ``schedule``; LlamaGen: ``uncond + s*(cond-uncond)``, guidance
    only when ``cfg > 1``). ``cfg_interval`` is LlamaGen's: -1 = guide every token.
    ``control`` optionally adds a control adapter's condition (control/__init__.py); every task
    then runs under it.
    """

    class_ids: tuple[int, ...]
    cfg: float = 1.5
    schedule: CfgSchedule = "linear"
    cfg_interval: int = -1
    negative_class_ids: tuple[int, ...] | None = None  # None = the null class
    class_names: tuple[str, ...] = field(default=(), compare=False)
    style_ids: tuple[int, ...] | None = None  # one per image, for models with styles; None = "any"
    style_names: tuple[str, ...] = field(default=(), compare=False)
    control: "ControlCondition | None" = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if not self.class_ids:
            raise InvalidInputError("Conditioning needs at least one class id")
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
        return len(self.class_ids)

    def repeat(self, n: int) -> "Conditioning":
        """Each class repeated n times (a batch of n images per class)."""
        ids = tuple(c for c in self.class_ids for _ in range(n))
        neg = None if self.negative_class_ids is None else tuple(c for c in self.negative_class_ids for _ in range(n))
        names = tuple(c for c in self.class_names for _ in range(n))
        styles = None if self.style_ids is None else tuple(s for s in self.style_ids for _ in range(n))
        style_names = tuple(s for s in self.style_names for _ in range(n))
        control = None if self.control is None else self.control.repeat(n)
        return Conditioning(ids, self.cfg, self.schedule, self.cfg_interval, neg, names, styles, style_names, control)
