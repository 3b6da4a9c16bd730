"""Emoji data set for the bundled models (v2: several styles of each emoji).

Drawings come from several freely licensed emoji sets (``styles.py``: Noto Color
Emoji from the Debian font, Twemoji and Fluent Emoji from npm packages), aligned
by code point / CLDR name; the style of every image is recorded (``style``).
The class models train on data v2's four sets (``styles.V2_STYLES``); the text model on all seven
(``--styles all``: adds Fluent's outlines and EmojiOne's colour and black sets).
Names and groups come from Unicode's ``emoji-test.txt`` (Debian ``unicode-data``),
CLDR keywords from npm ``emojibase-data``; all are needed at build time only,
and nothing is downloaded.

One class per fully-qualified emoji that is not a skin-tone variant and that the
Noto font draws, named by its CLDR short name ("red heart", "flag: Japan").
Skin-tone variants are folded into their base class ("waving hand: dark skin
tone" -> "waving hand") and serve as extra samples of it.

Split (``split`` array): 0 = train; held out, never used to train the
tokenizer, are 1 = every rendering of every ``HELDOUT_CLASS_EVERY``-th class
(class id % 25 == 24, so the tokenizer is scored on emoji it never saw) and
2 = every variant whose only qualifier is "dark skin tone". The generator needs every class, so it trains
on the canonical and skin-tone renderings of all classes except case (b).

Renderings per drawing (``kind``): the canonical one (subject centred, longer
side ``SUBJECT_FRACTION`` of the frame), ``n_aug`` mild augmentations (scale
U(0.8, 1.0), shift up to 4 px), and with probability ``placed_frac`` one
*placement*: the subject at scale U(0.35, 0.85) anywhere inside the frame, its
box recorded (``boxes``) for control adapters (the class generator trains on the
canonical and skin-tone drawings only: ``EmojiData.generator_train``). Captions (CLDR name +
keywords + style) are stored per image for text conditioning.
"""
from __future__ import annotations

import hashlib
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FONT_CANDIDATES = (
    "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf",
    "/usr/share/fonts/noto/NotoColorEmoji.ttf",
    "/usr/share/fonts/google-noto-emoji/NotoColorEmoji.ttf",
)
EMOJI_TEST_CANDIDATES = (
    "/usr/share/unicode/emoji/emoji-test.txt",
    "/usr/share/unicode-data/emoji/emoji-test.txt",
)
NATIVE_SIZE = 109  # the only size at which the CBDT bitmaps load
IMAGE_SIZE = 64
HELDOUT_CLASS_EVERY = 25
DEFAULT_CACHE = Path(__file__).resolve().parent / ".cache"
DATA_VERSION = 2
SUBJECT_FRACTION = 0.9  # longer side of a canonical subject, as a fraction of the frame

KIND_CANONICAL, KIND_SKIN, KIND_AUG, KIND_PLACED = 0, 1, 2, 3
SPLIT_TRAIN, SPLIT_HELDOUT_CLASS, SPLIT_HELDOUT_DARK = 0, 1, 2

_LINE = re.compile(r"^([0-9A-F ]+?)\s*;\s*fully-qualified\s*#\s*\S+\s+E\d+\.\d+\s+(.+)$")


@dataclass(frozen=True)
class EmojiEntry:
    """One fully-qualified emoji from emoji-test.txt."""

    emoji: str
    name: str
    group: str
    base_name: str  # name with skin-tone qualifiers removed
    skin: tuple[str, ...]  # skin-tone qualifiers ("dark skin tone", ...)


def find_font() -> Path | None:
    """Path of NotoColorEmoji.ttf, or None when the font is not installed."""
    for cand in FONT_CANDIDATES:
        if Path(cand).is_file():
            return Path(cand)
    hits = sorted(Path("/usr/share/fonts").rglob("NotoColorEmoji*.ttf")) if Path("/usr/share/fonts").is_dir() else []
    return hits[0] if hits else None


def find_emoji_test() -> Path | None:
    """Path of Unicode's emoji-test.txt, or None."""
    for cand in EMOJI_TEST_CANDIDATES:
        if Path(cand).is_file():
            return Path(cand)
    return None


def split_skin(name: str) -> tuple[str, tuple[str, ...]]:
    """'man: medium skin tone, red hair' -> ('man: red hair', ('medium skin tone',))."""
    if ": " not in name:
        return name, ()
    head, quals = name.split(": ", 1)
    parts = [q.strip() for q in quals.split(", ")]
    skin = tuple(q for q in parts if q.endswith("skin tone"))
    rest = [q for q in parts if not q.endswith("skin tone")]
    if not skin:
        return name, ()
    return (f"{head}: {', '.join(rest)}" if rest else head), skin


def _entries_from_emoji_test(path: Path) -> list[EmojiEntry]:
    out: list[EmojiEntry] = []
    group = ""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("# group:"):
            group = line.split(":", 1)[1].strip()
            continue
        m = _LINE.match(line.strip())
        if not m or group == "Component":
            continue
        text = "".join(chr(int(cp, 16)) for cp in m.group(1).split())
        name = m.group(2).strip()
        base, skin = split_skin(name)
        out.append(EmojiEntry(text, name, group, base, skin))
    return out


def _entries_from_pypi() -> list[EmojiEntry]:  # pragma: no cover - fallback only
    import emoji as emoji_pkg  # build-time only dependency

    out: list[EmojiEntry] = []
    for text, info in emoji_pkg.EMOJI_DATA.items():
        if info.get("status") != emoji_pkg.STATUS["fully_qualified"]:
            continue
        name = info["en"].strip(":").replace("_", " ")
        base, skin = split_skin(name)
        out.append(EmojiEntry(text, name, "Unknown", base, skin))
    return out


def load_entries() -> list[EmojiEntry]:
    """All fully-qualified emoji (Component group excluded), in emoji-test order."""
    path = find_emoji_test()
    if path is not None:
        return _entries_from_emoji_test(path)
    try:
        return _entries_from_pypi()
    except ImportError as exc:
        raise RuntimeError(
            "emoji names not found: install Debian 'unicode-data' "
            "(/usr/share/unicode/emoji/emoji-test.txt) or 'pip install emoji'"
        ) from exc


def stratified_pick(groups: list[str], n: int | None) -> list[int]:
    """Indices of an even, group-stratified subset of size ``n`` (all when None or too large), in order."""
    if n is None or n >= len(groups):
        return list(range(len(groups)))
    by_group: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        by_group.setdefault(g, []).append(i)
    # proportional quota per group (largest remainder), picked evenly spaced inside the group
    quotas = {g: n * len(v) / len(groups) for g, v in by_group.items()}
    take = {g: int(q) for g, q in quotas.items()}
    for g in sorted(quotas, key=lambda g: quotas[g] - take[g], reverse=True)[: n - sum(take.values())]:
        take[g] += 1
    keep: list[int] = []
    for g, v in by_group.items():
        if take[g]:
            keep += [v[i] for i in np.linspace(0, len(v) - 1, num=take[g]).round().astype(int)]
    return sorted(keep)


def select_classes(entries: list[EmojiEntry], max_classes: int | None = None) -> list[EmojiEntry]:
    """Base (non skin-tone) entries; if ``max_classes`` is set, an even, group-stratified subset."""
    bases = [e for e in entries if not e.skin]
    return [bases[i] for i in stratified_pick([e.group for e in bases], max_classes)]


class GlyphRenderer:
    """Noto glyphs from the font, and the one placement routine every style's drawing goes through."""

    def __init__(self, font_path: Path | None = None, size: int = IMAGE_SIZE) -> None:
        from PIL import ImageFont

        path = font_path or find_font()
        if path is None:
            raise FileNotFoundError("NotoColorEmoji.ttf not found: apt-get install fonts-noto-color-emoji")
        self.font = ImageFont.truetype(str(path), NATIVE_SIZE)
        self.size = size
        self._cell = self.font.getbbox("\U0001F600")  # one glyph cell (136x128)

    def glyph(self, text: str):
        """The glyph on its native RGBA canvas, or None when it is not a single glyph."""
        from PIL import Image, ImageDraw

        bbox = self.font.getbbox(text)
        if bbox[2] - bbox[0] > self._cell[2] - self._cell[0]:
            return None  # not ligated into one glyph (missing in this font version)
        canvas = Image.new("RGBA", (self._cell[2], self._cell[3]), (255, 255, 255, 0))
        ImageDraw.Draw(canvas).text((0, 0), text, font=self.font, embedded_color=True)
        if canvas.getbbox() is None:
            return None
        return canvas

    def place(self, drawing, scale: float = 1.0, shift: tuple[float, float] = (0.0, 0.0),
              centre: tuple[float, float] | None = None) -> tuple[np.ndarray, tuple[float, float, float, float]]:
        """Composite an RGBA drawing on white: cropped to its visible pixels, longer side
        ``SUBJECT_FRACTION * scale`` of the frame, centred (+ ``shift`` px) or at ``centre`` (fractions).
        Returns uint8 HWC and the subject box (x0, y0, x1, y1) as fractions of the frame."""
        from PIL import Image

        big = 4 * self.size  # work at 4x then downsample once (good antialiasing)
        visible = drawing.getchannel("A").point(lambda a: 255 if a > 8 else 0).getbbox() or (0, 0, *drawing.size)
        drawing = drawing.crop(visible)
        w, h = drawing.size
        fit = big * SUBJECT_FRACTION * scale / max(w, h)
        gw, gh = max(1, round(w * fit)), max(1, round(h * fit))
        g = drawing.resize((gw, gh), Image.LANCZOS)
        bg = Image.new("RGBA", (big, big), (255, 255, 255, 255))
        if centre is None:
            x = round((big - gw) / 2 + 4 * shift[0])
            y = round((big - gh) / 2 + 4 * shift[1])
        else:
            x, y = round(centre[0] * big - gw / 2), round(centre[1] * big - gh / 2)
        bg.paste(g, (x, y), g)  # alpha-blends colour; alpha is dropped below
        out = bg.convert("RGB").resize((self.size, self.size), Image.LANCZOS)
        box = (max(x, 0) / big, max(y, 0) / big, min(x + gw, big) / big, min(y + gh, big) / big)
        return np.asarray(out, dtype=np.uint8), box


@dataclass
class EmojiData:
    """The cached data set: images [N,64,64,3] uint8 and per-image metadata."""

    images: np.ndarray
    labels: np.ndarray  # class id per image
    kind: np.ndarray  # KIND_CANONICAL / KIND_SKIN / KIND_AUG / KIND_PLACED
    split: np.ndarray  # SPLIT_TRAIN / SPLIT_HELDOUT_CLASS / SPLIT_HELDOUT_DARK
    classes: list[dict]  # {"name", "emoji", "group", "keywords"} in class-id order
    style: np.ndarray  # index into ``styles`` per image
    styles: list[str]
    boxes: np.ndarray  # [N, 4] float32 subject box (x0, y0, x1, y1), fractions of the frame
    captions: list[str]  # per image: CLDR name; keywords; style

    def select(self, mask: np.ndarray) -> np.ndarray:
        return np.nonzero(mask)[0]

    def tokenizer_train(self) -> np.ndarray:
        """Indices for tokenizer training (all train-split renderings)."""
        return self.select(self.split == SPLIT_TRAIN)

    def tokenizer_heldout(self) -> np.ndarray:
        """Indices of held-out images (tokenizer evaluation)."""
        return self.select(self.split != SPLIT_TRAIN)

    def generator_train(self) -> np.ndarray:
        """The canonical and skin-tone drawings of every class in every style, minus the dark-skin-tone
        variants. Placements are for control adapters: with them the small class generator's samples
        were mostly shapeless blobs after 1600 steps (weights/MODEL_CARD.md, Recipe)."""
        return self.select(((self.kind == KIND_CANONICAL) | (self.kind == KIND_SKIN))
                           & (self.split != SPLIT_HELDOUT_DARK))

    def reference_set(self) -> np.ndarray:
        """Canonical drawings (all styles, skin tones but dark): the nearest-reference judge's gallery."""
        return self.select(((self.kind == KIND_CANONICAL) | (self.kind == KIND_SKIN))
                           & (self.split != SPLIT_HELDOUT_DARK))


def build_dataset(max_classes: int | None = None, n_aug: int = 1, seed: int = 0, font_path: Path | None = None,
                  log=None, styles: list[str] | None = None, placed_frac: float = 0.25) -> EmojiData:
    """Render the data set from the installed style sets (a minute or two per thousand classes)."""
    from . import styles as style_sets

    renderer = GlyphRenderer(font_path)
    sources = style_sets.load_styles(styles)
    keywords = style_sets.load_keywords()
    entries = load_entries()
    classes: list[dict] = []
    for e in select_classes(entries, max_classes):
        if renderer.glyph(e.emoji) is None:  # the class list is the font's, as in v1
            continue
        classes.append({"name": e.base_name, "emoji": e.emoji, "group": e.group,
                        "keywords": keywords.get(style_sets.keyword_key(e.emoji), [])})
    cid = {c["name"]: i for i, c in enumerate(classes)}
    rng = np.random.default_rng(seed)
    rows: dict[str, list] = {k: [] for k in ("img", "label", "kind", "split", "style", "box", "caption")}

    def add(placed: tuple[np.ndarray, tuple], label: int, kind: int, split: int, style: int) -> None:
        for key, val in zip(rows, (placed[0], label, kind, split, style, placed[1],
                                   style_sets.caption(classes[label]["name"], classes[label]["keywords"],
                                                      sources[style].name))):
            rows[key].append(val)

    variants = [(cid[e.base_name], e) for e in entries if e.base_name in cid]
    for n, (label, e) in enumerate(variants):
        split = SPLIT_HELDOUT_DARK if e.skin == ("dark skin tone",) else SPLIT_TRAIN
        if label % HELDOUT_CLASS_EVERY == HELDOUT_CLASS_EVERY - 1:
            split = SPLIT_HELDOUT_CLASS
        for si, src in enumerate(sources):
            drawing = src.drawing(e.emoji, e.name)
            if drawing is None:
                continue
            add(renderer.place(drawing), label, KIND_SKIN if e.skin else KIND_CANONICAL, split, si)
            for _ in range(n_aug):
                scale = float(rng.uniform(0.8, 1.0))
                shift = (float(rng.uniform(-4, 4)), float(rng.uniform(-4, 4)))
                add(renderer.place(drawing, scale, shift), label, KIND_AUG, split, si)
            if rng.uniform() < placed_frac:
                scale = float(rng.uniform(0.35, 0.85))
                half = SUBJECT_FRACTION * scale / 2
                centre = (float(rng.uniform(half, 1 - half)), float(rng.uniform(half, 1 - half)))
                add(renderer.place(drawing, scale, centre=centre), label, KIND_PLACED, split, si)
        if log is not None and n % 500 == 0:
            log(f"rendered {n}/{len(variants)}")
    return EmojiData(np.stack(rows["img"]), np.array(rows["label"], np.int64), np.array(rows["kind"], np.int8),
                     np.array(rows["split"], np.int8), classes, np.array(rows["style"], np.int8),
                     [s.name for s in sources], np.array(rows["box"], np.float32), rows["caption"])


def cache_path(cache_dir: Path, max_classes: int | None, n_aug: int, seed: int, styles: list[str] | None = None,
               placed_frac: float = 0.25) -> Path:
    from . import styles as style_sets

    font = find_font()
    names = list(styles or style_sets.V2_STYLES)
    key = json.dumps([DATA_VERSION, max_classes, n_aug, seed, str(font), font.stat().st_size if font else 0,
                      names, placed_frac, style_sets.packages_for(names)])
    return Path(cache_dir) / f"emoji_{hashlib.sha1(key.encode()).hexdigest()[:12]}.npz"


def load_dataset(cache_dir: Path | str = DEFAULT_CACHE, max_classes: int | None = None, n_aug: int = 1,
                 seed: int = 0, log=None, styles: list[str] | None = None, placed_frac: float = 0.25) -> EmojiData:
    """Load the data set from ``cache_dir`` (a .npz), building and caching it on first use."""
    path = cache_path(Path(cache_dir), max_classes, n_aug, seed, styles, placed_frac)
    if path.is_file():
        z = np.load(path, allow_pickle=False)
        meta = json.loads(str(z["meta"]))
        return EmojiData(z["images"], z["labels"], z["kind"], z["split"], meta["classes"], z["style"],
                         meta["styles"], z["boxes"], meta["captions"])
    data = build_dataset(max_classes, n_aug, seed, log=log, styles=styles, placed_frac=placed_frac)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    meta = {"classes": data.classes, "styles": data.styles, "captions": data.captions}
    np.savez_compressed(tmp, images=data.images, labels=data.labels, kind=data.kind, split=data.split,
                        style=data.style, boxes=data.boxes, meta=np.array(json.dumps(meta, ensure_ascii=False)))
    tmp.replace(path)
    return data


def load_for_manifest(cache_dir: Path | str, manifest: dict, log=None) -> EmojiData:
    """The data set a bundle was trained on: its manifest records the class count (a tiny test bundle's
    few classes; absent = all), so its steps never build the whole set for it, and its styles (a class
    model's style inputs, or the sets a text model trained on; absent = data v2's four)."""
    training = manifest.get("training", {})
    return load_dataset(cache_dir, training.get("args", {}).get("data_classes"), log=log,
                        styles=manifest.get("styles") or training.get("data_styles"))


def parse_styles(text: str | None) -> list[str] | None:
    """A ``--styles`` value: None (data v2's four), 'all', or comma-separated names."""
    from . import styles as style_sets

    if text is None:
        return None
    return list(style_sets.STYLES) if text == "all" else [s.strip() for s in text.split(",") if s.strip()]


def main(argv: list[str] | None = None) -> None:
    """CLI: build the cache and print a summary (``python -m arnodes.training.data``)."""
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cache-dir", default=str(DEFAULT_CACHE))
    p.add_argument("--max-classes", type=int, default=None)
    p.add_argument("--n-aug", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--styles", default=None, help="comma-separated style sets, or 'all' (default: data v2's four)")
    p.add_argument("--preview", default=None, help="write a PNG grid of the first images")
    a = p.parse_args(argv)
    d = load_dataset(a.cache_dir, a.max_classes, a.n_aug, a.seed, log=lambda s: print(s, file=sys.stderr),
                     styles=parse_styles(a.styles))
    per_style = {name: int((d.style == i).sum()) for i, name in enumerate(d.styles)}
    print(f"{len(d.classes)} classes, {len(d.images)} images {per_style} "
          f"(tokenizer train {len(d.tokenizer_train())}, held out {len(d.tokenizer_heldout())}, "
          f"generator {len(d.generator_train())}, placed {int((d.kind == KIND_PLACED).sum())})")
    if a.preview:
        from PIL import Image

        idx = np.linspace(0, len(d.images) - 1, 64).astype(int)
        grid = d.images[idx].reshape(8, 8, 64, 64, 3).transpose(0, 2, 1, 3, 4).reshape(512, 512, 3)
        Image.fromarray(grid).save(a.preview)


if __name__ == "__main__":
    main()
