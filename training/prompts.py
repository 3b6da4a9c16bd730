"""Captions for the bundled text model: each emoji's CLDR name and keywords, and its style's name.

A training caption is sampled afresh every time an image is drawn: the full name ("grinning cat with
smiling eyes"), the name with a few keywords, or one to three words of the name and keywords in any
order ("cat smile"), sometimes framed ("an emoji of ..."), and with the drawing's style named
("..., twemoji style") 60 % of the time, so that a prompt without a style leaves the style to the seed.

Held-out prompts (:func:`heldout_prompts`) are the test of "a prompt the model never saw": for a fixed
set of classes, a two-word keyword prompt that names only that class among all the model's classes
and is not its name. The sampler never gives that class a caption with exactly those content words.
The word vocabulary and the normalisation (:func:`words`) are the ones the shipped tokenizer applies.
"""
from __future__ import annotations

import itertools
import re
import unicodedata
from dataclasses import dataclass

import numpy as np

STYLE_WORDS: dict[str, tuple[str, ...]] = {  # data style name -> the phrases a caption may name it by
    "noto": ("noto", "google noto"),
    "twemoji": ("twemoji", "twitter"),
    "fluent-flat": ("fluent flat",),
    "fluent-color": ("fluent color",),
    "fluent-mono": ("fluent mono", "fluent outline"),
    "emojione": ("emojione", "emoji one"),
    "emojione-mono": ("emojione mono", "emojione black"),
}
GLUE = ("a", "an", "the", "of", "with", "in", "and", "emoji", "drawing", "icon", "style", "picture")
FRAMES = ("an emoji of {}", "{} emoji", "a drawing of {}", "{} icon")
STYLE_FRAMES = ("{}, {} style", "{} in {} style", "{1} style {0}", "{1} {0}")
SPECIAL = ("<pad>", "</s>", "<unk>")  # T5's ids 0, 1, 2
HELDOUT_SEED, HELDOUT_CLASSES = 2026, 120
P_NAME, P_NAME_KEYWORDS, P_FRAME, P_STYLE = 0.35, 0.2, 0.15, 0.6
SUBSET_SIZES, SUBSET_WEIGHTS = (1, 2, 3), (0.2, 0.45, 0.35)


def normalise(text: str) -> str:
    """NFKC, lower case, punctuation to spaces: what the tokenizer's normaliser does."""
    return re.sub(r"[^\w\s]", " ", unicodedata.normalize("NFKC", text).lower())


def words(text: str) -> list[str]:
    return normalise(text).split()


@dataclass(frozen=True)
class ClassWords:
    name: str
    name_words: tuple[str, ...]  # content words of the name, in order
    keyword_words: tuple[str, ...]  # content words of the keywords not in the name

    @property
    def pool(self) -> tuple[str, ...]:
        return self.name_words + self.keyword_words

    @classmethod
    def of(cls, row: dict) -> "ClassWords":
        name = [w for w in words(row["name"]) if w not in GLUE]
        seen, extra = set(name), []
        for k in row.get("keywords", []):
            for w in words(k):
                if w not in GLUE and w not in seen:
                    seen.add(w)
                    extra.append(w)
        return cls(row["name"], tuple(dict.fromkeys(name)), tuple(extra))


def vocabulary(classes: list[dict]) -> list[str]:
    """Special tokens, then every word a caption can hold (sorted): names, keywords, styles, glue words."""
    found: set[str] = set(GLUE)
    for row in classes:
        found.update(words(row["name"]))
        for k in row.get("keywords", []):
            found.update(words(k))
    for phrases in STYLE_WORDS.values():
        for p in phrases:
            found.update(words(p))
    for frame in FRAMES + STYLE_FRAMES:
        found.update(words(frame.replace("{}", " ").replace("{0}", " ").replace("{1}", " ")))
    return list(SPECIAL) + sorted(found)


@dataclass(frozen=True)
class HeldoutPrompt:
    class_id: int
    prompt: str


def heldout_prompts(classes: list[dict], candidates: list[int] | None = None, n: int = HELDOUT_CLASSES,
                    seed: int = HELDOUT_SEED) -> list[HeldoutPrompt]:
    """Two-word keyword prompts that name one class only (no other class has both words) and are not
    its name, with a word of the name where one can be; ``n`` classes drawn from ``candidates`` (default:
    all) with a fixed seed."""
    cw = [ClassWords.of(r) for r in classes]
    sets = [set(c.pool) for c in cw]
    rng = np.random.default_rng(seed)
    order = list(candidates if candidates is not None else range(len(classes)))
    rng.shuffle(order)
    out: list[HeldoutPrompt] = []
    for c in order:
        pairs = [p for p in itertools.combinations(cw[c].pool, 2)
                 if set(p) != set(cw[c].name_words) and not any(set(p) <= s for j, s in enumerate(sets) if j != c)]
        named = [p for p in pairs if set(p) & set(cw[c].name_words)]  # what a user would type: a word of the name
        pairs = named or pairs
        if not pairs:
            continue
        a, b = pairs[int(rng.integers(len(pairs)))]
        out.append(HeldoutPrompt(int(c), f"{b} {a}" if rng.random() < 0.5 else f"{a} {b}"))
        if len(out) == n:
            break
    return sorted(out, key=lambda h: h.class_id)


def with_style(subject: str, style: str, rng: np.random.Generator) -> str:
    phrases = STYLE_WORDS[style]
    phrase = phrases[int(rng.integers(len(phrases)))]
    return STYLE_FRAMES[int(rng.integers(len(STYLE_FRAMES)))].format(subject, phrase)


class CaptionSampler:
    """Random training captions for (class, style); never a held-out class's held-out word set."""

    def __init__(self, classes: list[dict], heldout: list[HeldoutPrompt]) -> None:
        self.cw = [ClassWords.of(r) for r in classes]
        self.banned = {h.class_id: frozenset(words(h.prompt)) for h in heldout}

    def subject(self, c: int, rng: np.random.Generator) -> str:
        cw = self.cw[c]
        r = rng.random()
        if r < P_NAME or not cw.pool:
            return cw.name
        if r < P_NAME + P_NAME_KEYWORDS and cw.keyword_words:
            k = int(rng.integers(1, min(3, len(cw.keyword_words)) + 1))
            return ", ".join([cw.name, *rng.choice(cw.keyword_words, size=k, replace=False).tolist()])
        for _ in range(8):
            k = min(int(rng.choice(SUBSET_SIZES, p=SUBSET_WEIGHTS)), len(cw.pool))
            picked = rng.choice(cw.pool, size=k, replace=False).tolist()
            if frozenset(picked) != self.banned.get(c):
                return " ".join(picked)
        return cw.name

    def caption(self, c: int, style: str | None, rng: np.random.Generator) -> str:
        return self.caption_and_style(c, style, rng)[0]

    def caption_and_style(self, c: int, style: str | None, rng: np.random.Generator) -> tuple[str, bool]:
        """(caption, whether it names the style)."""
        text = self.subject(c, rng)
        if rng.random() < P_FRAME:
            text = FRAMES[int(rng.integers(len(FRAMES)))].format(text)
        if style is not None and rng.random() < P_STYLE:
            return with_style(text, style, rng), True
        return text, False


def tokenizer_json(vocab: list[str]) -> str:
    """A T5-shaped word-level tokenizer (``tokenizers`` JSON): normalised as :func:`normalise`, split on
    white space, unknown words to ``<unk>``, ``</s>`` after every prompt (as T5 adds it)."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, processors

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase(),
                                           normalizers.Replace(Regex(r"[^\w\s]"), " ")])
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return tok.to_str()
