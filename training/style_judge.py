"""Which emoji set does a sample of class c look like? The judge of "with ``--style NAME`` the sample
is in that style".

A sample of class c is put in the style of the nearest of c's own canonical drawings, one per
style (pixel L2 at 32x32, area-downsampled): the sets draw one emoji with different colours,
outlines and proportions, so the class's own drawings are the sharpest reference there is. The
judge is scored before it judges anything on what model output looks like: the tokenizer's
reconstructions of those same drawings (``validation_accuracy``; 98.75 % with the bundled
tokenizer on 100 classes). A three-layer CNN trained on the style sets was the judge before: it
scored 76 % on held-out classes' drawings but 46 % on reconstructions, and leaned to twemoji,
so its verdicts on samples said more about it than about them.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from . import data as emoji_data


def features(images: np.ndarray) -> torch.Tensor:
    """uint8 [N,64,64,3] -> float [N, 3*32*32] (area downsampling), what the nearest-reference metrics compare."""
    t = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0
    return F.interpolate(t, size=(32, 32), mode="area").flatten(1)


@dataclass
class StyleJudge:
    styles: list[str]
    refs: torch.Tensor  # [classes, styles, features]: each judged class drawn in every style
    rows: dict[int, int]  # model class id -> row of refs
    validation_accuracy: float = 0.0  # on tokenizer reconstructions of the reference drawings
    validation_images: int = 0

    def predict(self, samples: np.ndarray, class_ids: list[int]) -> np.ndarray:
        """Style index per uint8 sample of the given (model) class."""
        refs = self.refs[[self.rows[c] for c in class_ids]]  # [N, styles, features]; NaN: no such drawing
        dist = ((refs - features(samples)[:, None]) ** 2).sum(-1)
        return dist.nan_to_num(float("inf")).argmin(1).numpy()

    def has(self, class_id: int, style: int) -> bool:
        return not bool(self.refs[self.rows[class_id], style].isnan().any())


def build_judge(d: emoji_data.EmojiData, remap: np.ndarray, class_ids: list[int], reconstruct) -> StyleJudge:
    """A judge for ``class_ids`` (model ids) from the data set's drawings; ``reconstruct(uint8 images) ->
    uint8 images`` is the tokenizer's encode -> decode. A style that lacks a class's emoji (EmojiOne 2.2
    predates the newer ones) is never that class's verdict; a class drawn in no style is an error."""
    canon = d.kind == emoji_data.KIND_CANONICAL
    model_ids = remap[d.labels]
    index = np.full((len(class_ids), len(d.styles)), -1)
    for row, c in enumerate(class_ids):
        for s in range(len(d.styles)):
            found = np.nonzero(canon & (model_ids == c) & (d.style == s))[0]
            index[row, s] = found[0] if len(found) else -1
        if (index[row] < 0).all():
            raise ValueError(f"class {c} has no canonical drawing in any style")
    present = index.reshape(-1) >= 0
    drawings = d.images[index.reshape(-1)[present]]
    feats = features(drawings)
    refs = torch.full((len(class_ids) * len(d.styles), feats.shape[1]), float("nan"))
    refs[torch.from_numpy(present)] = feats
    judge = StyleJudge(list(d.styles), refs.view(len(class_ids), len(d.styles), -1),
                       {c: i for i, c in enumerate(class_ids)})
    truth = np.tile(np.arange(len(d.styles)), len(class_ids))[present]
    judged = judge.predict(reconstruct(drawings), np.repeat(class_ids, len(d.styles))[present].tolist())
    judge.validation_accuracy = float((judged == truth).mean())
    judge.validation_images = int(len(drawings))
    return judge
