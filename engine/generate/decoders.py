"""Decode strategies, chosen per request by name: the one map the CLI, nodes and app read.

Every strategy fills the same canvas under the same conditioning and reports its model forward passes
(``stats["forwards"]``). Next-scale models have one strategy (a forward per scale); raster models add
the speculative ones (:mod:`.speculative`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..choices import DECODE_STRATEGIES, GSD_GROUP_MASS
from ..errors import InvalidInputError
from .speculative import SpeculativeParams


@dataclass(frozen=True)
class Decoder:
    name: str
    families: tuple[str, ...]
    exact: bool  # samples exactly the model's distribution
    summary: str
    group_mass: float = 0.0  # > 0: GSD's grouped acceptance


DECODERS: dict[str, Decoder] = {
    "plain": Decoder("plain", ("var", "llamagen"), True, "one forward per token (per scale for next-scale models)"),
    "sjd": Decoder("sjd", ("llamagen",), True, "speculative Jacobi decoding: a window of drafts verified per "
                   "forward, probabilistic acceptance; exact in distribution"),
    "gsd": Decoder("gsd", ("llamagen",), False, "grouped speculative decoding: SJD that also accepts drafts among "
                   "the most probable tokens (group_mass); fewer forwards, not exact", group_mass=GSD_GROUP_MASS),
}


if tuple(DECODERS) != DECODE_STRATEGIES:  # the front ends list engine/choices.py
    raise ImportError(f"engine/choices.py lists decoders {DECODE_STRATEGIES}, the registry has {tuple(DECODERS)}")


@dataclass(frozen=True)
class DecodeOptions:
    """A strategy by name and its knobs (``window``, ``init``; ``group_mass`` for gsd, None = its default)."""

    strategy: str = "plain"
    window: int | None = None  # None: one grid row (speculative.SpeculativeParams)
    init: str = "auto"  # speculative.INITS
    group_mass: float | None = None
    _spec: SpeculativeParams | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.strategy not in DECODERS:
            raise InvalidInputError(f"unknown decode strategy {self.strategy!r}; available: {', '.join(DECODERS)}")
        if self.group_mass is not None and self.strategy != "gsd":
            raise InvalidInputError(f"group_mass is a gsd setting; strategy {self.strategy!r} does not take it")
        mass = DECODERS[self.strategy].group_mass if self.group_mass is None else self.group_mass
        object.__setattr__(self, "_spec", SpeculativeParams(self.window, self.init, mass))

    @property
    def speculative(self) -> SpeculativeParams:
        assert self._spec is not None
        return self._spec

    def check_family(self, family: str) -> None:
        dec = DECODERS[self.strategy]
        if family not in dec.families:
            raise InvalidInputError(f"decode strategy {self.strategy!r} works with {', '.join(dec.families)} models, "
                                    f"not {family!r} ones (next-scale models decode one scale per forward)")
