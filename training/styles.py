"""Emoji style sources for the data set: one drawing per emoji per style, aligned by code point.

A style is a set of drawings of the same emoji in one design. Each source finds its
files in an installed package (a Debian font, npm packages) and returns the drawing
as an RGBA image with a transparent background, or None when the set lacks that
emoji. Nothing is downloaded: the packages are installed once (README, ``.ci/run``).

Shipped styles and why (licences that allow shipping a model trained on them):

- ``noto``: Noto Color Emoji, Debian ``fonts-noto-color-emoji`` (SIL OFL 1.1; the
  drawings Apache 2.0).
- ``twemoji``: Twemoji 64 px PNGs from npm ``emoji-datasource-twitter`` (graphics
  CC-BY 4.0, Twitter / jdecked; attribution in the model card and README).
- ``fluent-flat`` / ``fluent-color``: Microsoft Fluent Emoji SVGs (MIT) from npm
  ``fluentui-emoji`` ("flat" and "modern" sets), rasterised with ``resvg-py``.

Extra styles (data v3, the text model's: more drawings of each emoji, so that seeds change more than
the style among four): ``fluent-mono`` (the same package's "high-contrast" outlines, MIT),
``emojione`` / ``emojione-mono`` (EmojiOne 2.2.7's 64 px colour and black PNGs from npm ``emojione``:
its artwork is CC-BY 4.0, like Twemoji's; attribution in the model card). EmojiOne 2.2 predates
Unicode 10, so it lacks the newer emoji; a missing drawing is simply absent from that style.

Not used: OpenMoji (CC-BY-SA 4.0: share-alike terms on a trained model are unclear)
and the Apple / Facebook sets (not freely licensed).
"""
from __future__ import annotations

import io
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

from PIL import Image

NPM_PACKAGES = ("emoji-datasource-twitter@16.0.0", "fluentui-emoji@1.3.0", "emojibase-data@17.0.0", "emojione@2.2.7")
PACKAGES_ENV = "ARNODES_EMOJI_PACKAGES"
DEFAULT_PACKAGES = Path(__file__).resolve().parent / ".cache" / "npm" / "node_modules"
SVG_RENDER_SIZE = 160  # 2.5x the model's 64 px; gradients render in ~1/3 of the time of 256 px


class StyleSource(Protocol):
    name: str
    licence: str
    credit: str

    def drawing(self, emoji: str, name: str) -> Image.Image | None:
        """RGBA drawing of ``emoji`` (CLDR ``name``) on a transparent canvas, or None when missing."""


def package_dirs() -> list[Path]:
    """Where npm packages are looked for: $ARNODES_EMOJI_PACKAGES, training/.cache/npm, global roots."""
    dirs = [Path(p) for p in os.environ.get(PACKAGES_ENV, "").split(os.pathsep) if p]
    dirs += [DEFAULT_PACKAGES, Path("/usr/local/lib/node_modules"), Path("/usr/lib/node_modules")]
    return dirs


def find_package(name: str) -> Path | None:
    """The installed npm package ``name`` (no version), or None."""
    for root in package_dirs():
        if (root / name / "package.json").is_file():
            return root / name
    return None


def install_hint() -> str:
    return (f"npm install --prefix {DEFAULT_PACKAGES.parent} {' '.join(NPM_PACKAGES)}  "
            f"(or point ${PACKAGES_ENV} at a node_modules folder that has them)")


def require_package(name: str) -> Path:
    path = find_package(name)
    if path is None:
        raise FileNotFoundError(f"npm package {name!r} not found in {[str(d) for d in package_dirs()]}; "
                                f"install it: {install_hint()}")
    return path


def codepoints(emoji: str, keep_fe0f: bool = True) -> list[str]:
    return [f"{ord(ch):04x}" for ch in emoji if keep_fe0f or ch != "\ufe0f"]


def slug(name: str) -> str:
    """Fluent Emoji's file naming: 'smiling face with sunglasses' -> 'smiling-face-with-sunglasses'."""
    s = name.lower().replace("\u2019", "").replace("'", "")
    return re.sub(r"[^a-z0-9]+", "-", s).strip("-")


SKIN_SUFFIX = {"light skin tone": "light", "medium-light skin tone": "medium-light", "medium skin tone": "medium",
               "medium-dark skin tone": "medium-dark", "dark skin tone": "dark"}


@dataclass
class NotoFont:
    """Noto Color Emoji glyphs rendered by Pillow from the Debian font."""

    name: str = "noto"
    licence: str = "SIL OFL 1.1 (font) / Apache 2.0 (drawings)"
    credit: str = "Noto Color Emoji, Google (Debian fonts-noto-color-emoji)"

    def __post_init__(self) -> None:
        from .data import GlyphRenderer

        self._renderer = GlyphRenderer()

    def drawing(self, emoji: str, name: str) -> Image.Image | None:
        return self._renderer.glyph(emoji)


@dataclass
class CodepointPng:
    """PNGs named by code points, in an npm package's folder: Twemoji's ('2764-fe0f.png', or without
    FE0F) and EmojiOne's (no FE0F, no ZWJ: '1f468-2764-1f468.png')."""

    name: str = "twemoji"
    package: str = "emoji-datasource-twitter"
    folder: str = "img/twitter/64"
    drop_zwj: bool = False
    licence: str = "CC-BY 4.0 (graphics)"
    credit: str = "Twemoji, Twitter Inc. and jdecked (npm emoji-datasource-twitter)"

    def __post_init__(self) -> None:
        self._dir = require_package(self.package) / self.folder

    def _stems(self, emoji: str) -> list[str]:
        if self.drop_zwj:
            return ["-".join(cp for cp in codepoints(emoji, keep_fe0f=False) if cp != "200d")]
        return ["-".join(codepoints(emoji, keep)) for keep in (True, False)]

    def drawing(self, emoji: str, name: str) -> Image.Image | None:
        for stem in self._stems(emoji):
            path = self._dir / f"{stem}.png"
            if path.is_file():
                with Image.open(path) as im:
                    return im.convert("RGBA")
        return None


@dataclass
class FluentSvg:
    """Fluent Emoji SVGs named by CLDR name ('red-heart.svg', skin tones as 'waving-hand-dark.svg')."""

    name: str = "fluent-flat"
    folder: str = "flat"
    licence: str = "MIT"
    credit: str = "Fluent Emoji, Microsoft (npm fluentui-emoji)"

    def __post_init__(self) -> None:
        import resvg_py  # training-time only: the SVG rasteriser

        self._render = resvg_py.svg_to_bytes
        self._dir = require_package("fluentui-emoji") / "icons" / self.folder

    def _file(self, name: str) -> Path | None:
        from .data import split_skin

        base, skin = split_skin(name)
        stem = slug(base)
        if skin:  # one tone only: the sets draw mixed-tone couples differently
            if len(skin) != 1 or skin[0] not in SKIN_SUFFIX:
                return None
            candidates = [f"{stem}-{SKIN_SUFFIX[skin[0]]}"]
        else:
            candidates = [stem, f"{stem}-default"]
        for c in candidates:
            if (self._dir / f"{c}.svg").is_file():
                return self._dir / f"{c}.svg"
        return None

    def drawing(self, emoji: str, name: str) -> Image.Image | None:
        path = self._file(name)
        if path is None:
            return None
        png = self._render(svg_path=str(path), width=SVG_RENDER_SIZE, height=SVG_RENDER_SIZE)
        return Image.open(io.BytesIO(bytes(png))).convert("RGBA")


def emojione(name: str = "emojione", folder: str = "png") -> CodepointPng:
    """EmojiOne 2.2.7's 64 px PNGs (``png``: colour, ``png_bw``: black)."""
    return CodepointPng(name=name, package="emojione", folder=f"assets/{folder}", drop_zwj=True,
                        licence="CC-BY 4.0 (artwork)", credit="EmojiOne 2.2.7, Ranks.com (npm emojione)")


# name -> factory; the order is the style id order of the data set and the model's style embedding
STYLES: dict[str, Callable[[], StyleSource]] = {
    "noto": NotoFont,
    "twemoji": CodepointPng,
    "fluent-flat": FluentSvg,
    "fluent-color": lambda: FluentSvg(name="fluent-color", folder="modern"),
    "fluent-mono": lambda: FluentSvg(name="fluent-mono", folder="high-contrast"),
    "emojione": emojione,
    "emojione-mono": lambda: emojione("emojione-mono", "png_bw"),
}
V2_STYLES = ("noto", "twemoji", "fluent-flat", "fluent-color")  # data v2: the class models' four sets
STYLE_PACKAGE = {"twemoji": "emoji-datasource-twitter", "fluent-flat": "fluentui-emoji", "fluent-color": "fluentui-emoji",
                 "fluent-mono": "fluentui-emoji", "emojione": "emojione", "emojione-mono": "emojione"}  # noto: Debian
KEYWORDS_PACKAGE = "emojibase-data"


def packages_for(styles: list[str]) -> list[str]:
    """The pinned npm packages (NPM_PACKAGES entries) a data set of these styles reads: part of its cache key,
    so adding a set to the list does not invalidate caches that never read it."""
    names = {STYLE_PACKAGE[s] for s in styles if s in STYLE_PACKAGE} | {KEYWORDS_PACKAGE}
    return [p for p in NPM_PACKAGES if p.rsplit("@", 1)[0] in names]


def load_styles(names: list[str] | None = None) -> list[StyleSource]:
    """Instantiate the named style sources (default: data v2's four); a missing package is one clear error."""
    names = list(V2_STYLES) if names is None else names
    unknown = [n for n in names if n not in STYLES]
    if unknown:
        raise ValueError(f"unknown styles {unknown}; known: {list(STYLES)}")
    return [STYLES[n]() for n in names]


def load_keywords() -> dict[str, list[str]]:
    """CLDR keywords per emoji (code points without FE0F, upper case) from npm ``emojibase-data``."""
    import json

    path = require_package("emojibase-data") / "en" / "data.json"
    out: dict[str, list[str]] = {}
    for row in json.loads(path.read_text(encoding="utf-8")):
        out[row["hexcode"].upper()] = list(row.get("tags") or [])
        for skin in row.get("skins") or ():
            out[skin["hexcode"].upper()] = list(skin.get("tags") or row.get("tags") or [])
    return out


def keyword_key(emoji: str) -> str:
    return "-".join(codepoints(emoji, keep_fe0f=False)).upper()


def caption(name: str, keywords: list[str], style: str) -> str:
    """'red heart; emotion, heart, love, red; twemoji style' (the text-prompt issue's training text)."""
    kw = ", ".join(k for k in keywords if k.lower() != name.lower())
    return f"{name}; {kw}; {style} style" if kw else f"{name}; {style} style"
