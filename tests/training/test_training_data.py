"""The emoji data pipeline renders real glyphs with names, groups and a held-out split."""
from __future__ import annotations

import numpy as np
import pytest

from arnodes.training import data

pytestmark = pytest.mark.skipif(
    data.find_font() is None or data.find_emoji_test() is None,
    reason="needs the Noto Color Emoji font (fonts-noto-color-emoji) and emoji-test.txt (unicode-data)",
)


def test_training_split_skin() -> None:
    assert data.split_skin("waving hand: dark skin tone") == ("waving hand", ("dark skin tone",))
    assert data.split_skin("man: medium skin tone, red hair") == ("man: red hair", ("medium skin tone",))
    assert data.split_skin("flag: Japan") == ("flag: Japan", ())


def test_training_select_classes_spans_groups() -> None:
    entries = data.load_entries()
    chosen = data.select_classes(entries, 40)
    assert len(chosen) == 40
    assert len({e.group for e in chosen}) >= 6
    assert all(not e.skin for e in chosen)
    assert "red heart" in {e.name for e in entries}


def test_training_build_small_dataset(tmp_path) -> None:
    d = data.load_dataset(tmp_path, max_classes=30, n_aug=1, seed=0)
    assert d.images.dtype == np.uint8 and d.images.shape[1:] == (64, 64, 3)
    assert len(d.classes) == 30 and set(d.classes[0]) == {"name", "emoji", "group"}
    assert d.labels.max() == 29
    # white background, coloured glyph in the middle
    canon = d.images[(d.kind == data.KIND_CANONICAL)]
    assert (canon[:, 0, 0] > 245).all()
    assert canon[:, 24:40, 24:40].std() > 10
    assert len(d.tokenizer_heldout()) > 0 and len(d.generator_train()) >= 30
    # second load comes from the cache and is identical
    d2 = data.load_dataset(tmp_path, max_classes=30, n_aug=1, seed=0)
    assert np.array_equal(d.images, d2.images) and d2.classes == d.classes
    assert list(tmp_path.glob("emoji_*.npz"))
