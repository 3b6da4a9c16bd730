"""The emoji data pipeline renders every emoji in several styles (v2's four for the class models, all seven
for the text model), with names, captions, placements and a held-out split."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from arnodes.training import data, styles

pytestmark = pytest.mark.skipif(
    data.find_font() is None or data.find_emoji_test() is None or any(styles.find_package(p.split("@")[0]) is None for p in styles.NPM_PACKAGES),
    reason="needs the Noto Color Emoji font (fonts-noto-color-emoji), emoji-test.txt (unicode-data) and the npm "
           f"emoji sets ({styles.install_hint()})",
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


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> data.EmojiData:
    return data.load_dataset(tmp_path_factory.mktemp("emoji"), max_classes=30, n_aug=1, seed=0, placed_frac=0.5,
                             styles=list(styles.STYLES))


def test_training_build_small_dataset(small, tmp_path_factory) -> None:
    d = small
    assert d.images.dtype == np.uint8 and d.images.shape[1:] == (64, 64, 3)
    assert len(d.classes) == 30 and {"name", "emoji", "group", "keywords"} <= set(d.classes[0])
    assert d.labels.max() == 29
    # white background, coloured drawing in the middle
    canon = d.images[(d.kind == data.KIND_CANONICAL)]
    assert (canon[:, 0, 0] > 245).all()
    assert canon[:, 24:40, 24:40].std() > 10
    assert len(d.tokenizer_heldout()) > 0 and len(d.generator_train()) >= 30
    # second load comes from the cache and is identical (the build is deterministic)
    again = data.load_dataset(tmp_path_factory.mktemp("emoji2"), max_classes=30, n_aug=1, seed=0, placed_frac=0.5,
                              styles=list(styles.STYLES))
    assert np.array_equal(d.images, again.images) and again.classes == d.classes
    assert again.captions == d.captions and np.array_equal(again.boxes, d.boxes)


def test_training_every_style_draws_the_same_emoji_differently(small) -> None:
    d = small
    assert d.styles == list(styles.STYLES) and len(d.styles) == 7
    canon = d.kind == data.KIND_CANONICAL
    per_class = [{int(s) for s in d.style[canon & (d.labels == c)]} for c in range(len(d.classes))]
    assert np.mean([len(s) for s in per_class]) >= 5  # aligned by code point: most classes in 5+ styles
    for s in range(len(d.styles)):  # every set finds its files (EmojiOne's names drop FE0F and ZWJ)
        assert sum(s in have for have in per_class) >= 20, d.styles[s]
    for c in range(len(d.classes)):  # the styles' drawings of one emoji are different pictures
        rows = np.nonzero(canon & (d.labels == c))[0]
        imgs = d.images[rows].astype(np.float32)
        for a in range(len(rows)):
            for b in range(a + 1, len(rows)):
                assert np.abs(imgs[a] - imgs[b]).mean() > 3, (d.classes[c]["name"], d.style[rows[a]], d.style[rows[b]])


def test_training_class_models_keep_data_v2s_four_styles(tmp_path) -> None:
    """Without --styles the data set is v2's (what emoji-var and emoji-raster were trained on); a bundle's
    manifest picks its own."""
    assert [s.name for s in styles.load_styles()] == list(styles.V2_STYLES)
    assert data.parse_styles(None) is None and data.parse_styles("all") == list(styles.STYLES)
    assert data.parse_styles("noto, emojione") == ["noto", "emojione"]
    v2 = data.cache_path(tmp_path, 3, 1, 0)
    assert data.cache_path(tmp_path, 3, 1, 0, list(styles.V2_STYLES)) == v2
    assert data.cache_path(tmp_path, 3, 1, 0, list(styles.STYLES)) != v2
    assert styles.packages_for(list(styles.V2_STYLES)) == [p for p in styles.NPM_PACKAGES if "emojione" not in p]
    assert styles.packages_for(["noto", "emojione"]) == ["emojibase-data@17.0.0", "emojione@2.2.7"]
    tiny = data.load_for_manifest(tmp_path, {"training": {"data_styles": ["emojione-mono"], "args": {"data_classes": 3}}})
    assert tiny.styles == ["emojione-mono"] and len(tiny.classes) == 3
    canon = tiny.images[tiny.kind == data.KIND_CANONICAL]
    assert (canon.reshape(len(canon), -1, 3).std(-1) < 12).mean() > 0.98  # black on white: no colour


def test_training_captions_name_keywords_and_style(small) -> None:
    d = small
    assert len(d.captions) == len(d.images)
    for i in range(0, len(d.images), 37):
        cls = d.classes[d.labels[i]]
        assert d.captions[i].startswith(cls["name"]) and d.captions[i].endswith(f"{d.styles[d.style[i]]} style")
    heart = styles.caption("red heart", ["emotion", "heart", "love"], "twemoji")
    assert heart == "red heart; emotion, heart, love; twemoji style"


def test_training_placements_move_and_shrink_the_subject(small) -> None:
    d = small
    placed = np.nonzero(d.kind == data.KIND_PLACED)[0]
    canon = np.nonzero(d.kind == data.KIND_CANONICAL)[0]
    assert len(placed) >= len(canon) // 4
    size = lambda b: np.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1])  # noqa: E731
    assert np.allclose(size(d.boxes[canon]), data.SUBJECT_FRACTION, atol=0.02)
    assert size(d.boxes[placed]).max() < 0.8 and size(d.boxes[placed]).min() > 0.25
    centres = (d.boxes[placed, :2] + d.boxes[placed, 2:]) / 2
    assert np.abs(centres - 0.5).max() > 0.2  # some are far off-centre
    for i in placed[:20]:  # the box is where the drawing is: outside it the frame is white
        x0, y0, x1, y1 = (d.boxes[i] * 64).round().astype(int)
        outside = d.images[i].copy()
        outside[max(y0 - 1, 0):y1 + 1, max(x0 - 1, 0):x1 + 1] = 255
        assert outside.min() > 240


def test_training_ci_installs_the_npm_sets_the_data_build_reads() -> None:
    ci = (Path(__file__).resolve().parents[2] / ".ci" / "run").read_text()
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    for package in styles.NPM_PACKAGES:
        assert package in ci and package in readme, package


def test_training_style_judge_finds_the_style_of_each_drawing(small) -> None:
    """The style judge names the set a drawing comes from, also after a lossy round trip (a blur
    standing in for the tokenizer)."""
    import numpy as np
    from PIL import Image, ImageFilter

    from arnodes.training.style_judge import build_judge

    canon = small.kind == data.KIND_CANONICAL
    every = [c for c in range(len(small.classes))
             if all((canon & (small.labels == c) & (small.style == s)).any() for s in range(len(small.styles)))]
    assert len(every) >= 5
    remap = np.arange(len(small.classes))

    def blur(images: np.ndarray) -> np.ndarray:
        return np.stack([np.asarray(Image.fromarray(x).filter(ImageFilter.GaussianBlur(1.0))) for x in images])
    judge = build_judge(small, remap, every, blur)
    assert judge.validation_images == len(every) * len(small.styles) and judge.validation_accuracy >= 0.9
    pick = [np.nonzero(canon & (small.labels == c) & (small.style == s))[0][0]
            for c in every for s in range(len(small.styles))]
    truth = np.tile(np.arange(len(small.styles)), len(every))
    assert (judge.predict(small.images[pick], [c for c in every for _ in small.styles]) == truth).all()
