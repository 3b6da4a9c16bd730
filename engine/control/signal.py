"""What a control adapter hands the generator: condition tokens added to the hidden states.

Both families consume control the same way (ControlAR for raster models, CAR for next-scale
models): before chosen blocks, position j of the sequence gets ``tokens[:, j]`` added. The
adapter computes the tokens once per image for the whole sequence; the models only index them.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ControlSignal:
    """block index -> (NB, L, C) tokens over all sequence positions, strength already applied.
    Under classifier-free guidance the unconditional rows are zero (the null condition)."""

    per_block: dict[int, torch.Tensor]

    def add(self, block: int, h: torch.Tensor, positions: slice | torch.Tensor) -> torch.Tensor:
        """h (NB, S, C) at sequence ``positions`` plus the block's condition (h itself when none)."""
        tokens = self.per_block.get(block)
        if tokens is None:
            return h
        return h + tokens[:, positions].to(h.dtype)

    def with_null_rows(self, guided: bool) -> "ControlSignal":
        """[cond; zeros] for a guided (doubled) batch: the unconditional branch is uncontrolled."""
        if not guided:
            return self
        return ControlSignal({i: torch.cat([t, torch.zeros_like(t)]) for i, t in self.per_block.items()})

    def scaled(self, strength: float) -> "ControlSignal":
        return self if strength == 1.0 else ControlSignal({i: t * strength for i, t in self.per_block.items()})


def add_control(control: ControlSignal | None, block: int, h: torch.Tensor,
                positions: slice | torch.Tensor) -> torch.Tensor:
    """The models' one hook: a no-op without control, so uncontrolled runs are untouched."""
    return h if control is None else control.add(block, h, positions)
