"""A small style classifier: which emoji set does a 64x64 drawing look like it comes from?

The judge of "with ``--style NAME`` the sample is in that style": a three-layer CNN on 32x32 trained on
the data set's drawings of the training classes in every style, scored on the drawings of
the held-out classes (emoji it never saw), so its accuracy on unseen subjects is known before
it judges generated samples. Deterministic for a seed; about a minute on a 2-core CPU.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import data as emoji_data


def _net(num_styles: int) -> nn.Module:
    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2)]

    return nn.Sequential(*block(3, 32), *block(32, 64), *block(64, 96),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(96, num_styles))


def _inputs(images: np.ndarray) -> torch.Tensor:
    """uint8 [N,64,64,3] -> [N,3,32,32] in [-1, 1]: style shows at half size, at a quarter of the cost."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1)
    return F.avg_pool2d(x, 2).contiguous()


@dataclass
class StyleJudge:
    net: nn.Module
    styles: list[str]
    heldout_accuracy: float  # on the held-out classes' drawings
    heldout_images: int

    @torch.no_grad()
    def predict(self, images: np.ndarray, batch: int = 256) -> np.ndarray:
        """Style index per uint8 [N,64,64,3] image."""
        self.net.eval()
        out = [self.net(_inputs(images[i:i + batch])).argmax(1) for i in range(0, len(images), batch)]
        return torch.cat(out).numpy()


def train_judge(d: emoji_data.EmojiData, steps: int = 600, batch: int = 64, seed: int = 0) -> StyleJudge:
    """Train on the train-split classes (all renderings), score on the held-out classes."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    train = np.nonzero(d.split == emoji_data.SPLIT_TRAIN)[0]
    held = np.nonzero(d.split == emoji_data.SPLIT_HELDOUT_CLASS)[0]
    net = _net(len(d.styles))
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    styles = torch.from_numpy(d.style.astype(np.int64))
    net.train()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = 2e-3 * 0.5 * (1 + np.cos(np.pi * step / steps))
        idx = train[torch.randint(0, len(train), (batch,), generator=gen).numpy()]
        x = _inputs(d.images[idx])
        flip = torch.rand(batch, generator=gen) < 0.5
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
        loss = F.cross_entropy(net(x), styles[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    judge = StyleJudge(net, list(d.styles), 0.0, int(len(held)))
    judge.heldout_accuracy = float((judge.predict(d.images[held]) == d.style[held]).mean()) if len(held) else 0.0
    return judge
