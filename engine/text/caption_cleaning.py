"""Prompt cleaning for the released LlamaGen-T2I checkpoints: the text they were trained on was cleaned,
so a prompt must be cleaned the same way before T5 sees it.

The official sampler cleans every prompt twice with its ``clean_caption`` (it needs ftfy and
BeautifulSoup, which arnodes does not depend on). This module does the same job with the standard
library, rule by rule, in the same order: URL-decoding, lower case, no URLs / HTML tags / @handles /
CJK ideographs / file names / long numbers / product codes / shop phrases, one form of every dash and
quote, stray punctuation to spaces, "a,b" -> "a, b", single spaces. The one step left out is ftfy's
repair of mojibake (text decoded with the wrong codec, "cafÃ©"): its other fixes that touch a prompt
(NFC, full-width letters, ligatures, control characters, C1 controls read as Windows-1252, curly
quotes, a byte-order mark) are here; like BeautifulSoup, script and style bodies are dropped. The fixture
``tests/fixtures/reference/llamagen_t2i/clean_caption.json`` holds the official outputs for a set of
prompts; the tests compare against it.
"""
from __future__ import annotations

import html
import re
import unicodedata
from dataclasses import dataclass
from html.parser import HTMLParser
from urllib.parse import unquote_plus

__all__ = ["clean_caption", "clean_prompt"]


@dataclass(frozen=True)
class Rule:
    """One substitution: ``pattern`` (a compiled regex) -> ``replacement``; ``why`` names what it removes."""

    why: str
    pattern: re.Pattern
    replacement: str = ""

    def __call__(self, text: str) -> str:
        return self.pattern.sub(self.replacement, text)


def _rule(why: str, pattern: str, replacement: str = "") -> Rule:
    return Rule(why, re.compile(pattern), replacement)


_DOMAINS = r"(?:com|co|ru|net|org|edu|gov|it)"
_FILE_EXTENSIONS = r"(?:png|jpg|jpeg|bmp|webp|eps|pdf|apk|mp4)"
_DASHES = ("\u002d\u058a\u05be\u1400\u1806\u2010\u2011\u2012\u2013\u2014\u2015\u2e17\u2e1a\u2e3a\u2e3b\u2e40"
           "\u301c\u3030\u30a0\ufe31\ufe32\ufe58\ufe63\uff0d")
_STRAY_PUNCTUATION = "#®•©™&@·º½¾¿¡§~)(\\][}{|\\\\/*"

# before the HTML step: links are cut while their text is still one token
_LINKS = (
    _rule("links", r"\b((?:https?:(?:/{1,3}|[a-zA-Z0-9%])|[a-zA-Z0-9.\-]+[.]" + _DOMAINS + r"[\w/-]*\b/?(?!@)))"),
    _rule("www links", r"\b((?:www:(?:/{1,3}|[a-zA-Z0-9%])|[a-zA-Z0-9.\-]+[.]" + _DOMAINS + r"[\w/-]*\b/?(?!@)))"),
)

# after the HTML step, before the first basic clean
_MARKUP_AND_NOISE = (
    _rule("@handles", r"@[\w\d]+\b"),
    _rule("CJK strokes to ideographs (U+31C0-U+9FFF)", r"[\u31c0-\u9fff]+"),
    _rule("every dash", "[" + _DASHES + "]+", "-"),
    _rule("double quotes", r"[`´«»“”¨]", '"'),
    _rule("single quotes", r"[‘’]", "'"),
    _rule("&quot;", r"&quot;?"),
    _rule("&amp", r"&amp"),
    _rule("IP addresses", r"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}", " "),
    _rule("article ids", r"\d:\d\d\s+$"),
    _rule("escaped line breaks", r"\\n", " "),
    _rule("#1-#999", r"#\d{1,3}\b"),
    _rule("#12345 and longer", r"#\d{5,}\b"),
    _rule("numbers of six digits and more", r"\b\d{6,}\b"),
    _rule("file names", r"\S+\." + _FILE_EXTENSIONS),
    _rule("runs of quotes", r"[\"']{2,}", '"'),
    _rule("runs of dots", r"[.]{2,}", " "),
    _rule("stray punctuation", "[" + _STRAY_PUNCTUATION + "]+", " "),
    _rule("lone dots", r"\s+\.\s+", " "),
)

# after the basic clean
_CODES_AND_SHOP_TALK = (
    _rule("codes like jc6640", r"\b[a-zA-Z]{1,3}\d{3,15}\b"),
    _rule("codes like jc6640vc", r"\b[a-zA-Z]+\d+[a-zA-Z]+\b"),
    _rule("codes like 6640vc231", r"\b\d+[a-zA-Z]+\d+\b"),
    _rule("shipping", r"(worldwide\s+)?(free\s+)?shipping"),
    _rule("download", r"(free\s)?download(\sfree)?"),
    _rule("click for / on", r"\bclick\b\s(?:for|on)\s\w+"),
    _rule("image formats", r"\b" + _FILE_EXTENSIONS + r"(\simage[s]?)?"),
    _rule("page numbers", r"\bpage\s+\d+\b"),
    _rule("mixed codes like j2d1a2a", r"\b\d*[a-zA-Z]+\d+[a-zA-Z]+\d+[a-zA-Z\d]*\b", " "),
    _rule("sizes like 10x20", r"\b\d+\.?\d*[xх×]\d+\.?\d*\b"),
    _rule("space before a colon", r"\b\s+\:\s+", ": "),
    _rule("a space after , . / between words", r"(\D[,\./])\b", r"\1 "),
    _rule("runs of white space", r"\s+", " "),
)

# the ends (no strip before them: a caption that starts with a space keeps its first character)
_ENDS = (
    _rule("surrounding quotes", r"^[\"']([\w\W]+)[\"']$", r"\1"),
    _rule("a leading separator", r"^['_,\-:;]"),
    _rule("a trailing separator", r"['_,\-:+]$"),
    _rule("a lone dotted word", r"^\.\S+$"),
)

_SEPARATORS = re.compile(r"[-_]")
_WIDE = {cp: cp - 0xFEE0 for cp in range(0xFF01, 0xFF5F)} | {0x3000: 0x20}  # full-width forms -> ASCII
_LIGATURES = {ord(c): unicodedata.normalize("NFKC", c) for c in "ﬀﬁﬂﬃﬄﬅﬆ"}
_C1_AS_CP1252 = {cp: bytes([cp]).decode("cp1252", errors="ignore") or chr(cp) for cp in range(0x80, 0xA0)}
_CURLY = {ord("‘"): "'", ord("’"): "'", ord("‚"): "'", ord("‛"): "'",
          ord("“"): '"', ord("”"): '"', ord("„"): '"', ord("‟"): '"'}


class _TextOnly(HTMLParser):
    """The text of an HTML fragment, entities decoded, without script and style bodies (what
    BeautifulSoup's ``.text`` gives)."""

    HIDDEN = ("script", "style")

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.hidden = 0

    def handle_starttag(self, tag: str, attrs) -> None:
        self.hidden += tag in self.HIDDEN

    def handle_endtag(self, tag: str) -> None:
        self.hidden -= tag in self.HIDDEN and self.hidden > 0

    def handle_data(self, data: str) -> None:
        if not self.hidden:
            self.parts.append(data)


def _html_text(text: str) -> str:
    parser = _TextOnly()
    parser.feed(text)
    parser.close()
    return "".join(parser.parts)


def _fix_text(text: str) -> str:
    """ftfy's fixes that apply to a prompt, mojibake repair aside: C1 controls read as Windows-1252,
    line breaks, control characters, full-width letters, ligatures, curly quotes, NFC."""
    text = text.translate(_C1_AS_CP1252)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    for brk in "\u2028\u2029":
        text = text.replace(brk, "\n")
    text = text.replace("\ufeff", "")  # a byte-order mark
    text = "".join(ch for ch in text if ch in "\n\t\x0c" or unicodedata.category(ch) != "Cc")
    text = text.translate(_WIDE).translate(_LIGATURES).translate(_CURLY)
    return unicodedata.normalize("NFC", text)


def _basic_clean(text: str) -> str:
    return html.unescape(html.unescape(_fix_text(text))).strip()


def _apply(rules: tuple[Rule, ...], text: str) -> str:
    for rule in rules:
        text = rule(text)
    return text


def clean_caption(caption: str) -> str:
    """One pass of the official cleaning (see the module docstring)."""
    text = unquote_plus(str(caption)).strip().lower()
    text = text.replace("<person>", "person")
    text = _html_text(_apply(_LINKS, text))
    text = _apply(_MARKUP_AND_NOISE, text)
    if len(_SEPARATORS.findall(text)) > 3:  # this-is-my-cute-cat / this_is_my_cute_cat
        text = _SEPARATORS.sub(" ", text)
    text = _apply(_CODES_AND_SHOP_TALK, _basic_clean(text))
    return _apply(_ENDS, text).strip()


def clean_prompt(prompt: str) -> str:
    """What the official sampler does to a prompt before T5: clean it twice."""
    return clean_caption(clean_caption(prompt))
