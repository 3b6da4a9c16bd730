"""Class-label names, so users can ask for "golden retriever" instead of 207.

Torch-free: the graph layer validates class inputs before any model is loaded.
"""
from __future__ import annotations

import difflib
import json
import operator
import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Sequence

from .errors import InvalidInputError, MissingFileError, UnknownNameError

IMAGENET_JSON = Path(__file__).parent / "data" / "imagenet_classes.json"

_SPACES = re.compile(r"[\s_]+")
_INT = re.compile(r"[+-]?\d+")
_SEPARATORS = re.compile(r"[,;]")
_MAX_COMMA_PIECES = 8  # a class name holds at most 7 commas; bounds the rejoin search to linear time


def _norm(text: str) -> str:
    """Matching key: case-insensitive, underscores and runs of spaces count as one space."""
    return _SPACES.sub(" ", text).strip().casefold()


def _as_synonyms(entry: Any, i: int) -> list[str]:
    """One class's synonyms; a plain "tench, Tinca tinca" string is split like classic label files."""
    if isinstance(entry, str):
        raw: Iterable[Any] = _SEPARATORS.split(entry)
    elif isinstance(entry, (list, tuple)):
        raw = entry
    else:
        raise InvalidInputError(f"class {i}: expected a name or a list of names, got {type(entry).__name__}")
    out: list[str] = []
    seen: set[str] = set()
    for s in raw:
        if not isinstance(s, str):
            raise InvalidInputError(f"class {i}: names must be strings, got {type(s).__name__}")
        s = " ".join(s.split())
        if s and _norm(s) not in seen:
            seen.add(_norm(s))
            out.append(s)
    if not out:
        raise InvalidInputError(f"class {i} has no name")
    return out


def _join_or(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " or " + items[-1]


class ClassNames:
    """Per-class synonyms (first = display name) plus optional emoji, with forgiving lookup."""

    def __init__(self, names: Sequence[Sequence[str]] | Sequence[str], emoji: Sequence[str] | None = None) -> None:
        self._syn: tuple[tuple[str, ...], ...] = tuple(tuple(_as_synonyms(e, i)) for i, e in enumerate(names))
        if not self._syn:
            raise InvalidInputError("a class list needs at least one class")
        if emoji is not None:
            if len(emoji) != len(self._syn):
                raise InvalidInputError(f"got {len(emoji)} emoji for {len(self._syn)} classes")
            if not all(isinstance(e, str) for e in emoji):
                raise InvalidInputError("emoji must be strings")
        self._emoji: tuple[str, ...] | None = tuple(emoji) if emoji is not None else None
        # Display names win over other synonyms ("tub" is class "tub", not "bathtub, ..., tub").
        self._primary: dict[str, list[int]] = {}
        self._any: dict[str, list[int]] = {}
        for i, syns in enumerate(self._syn):
            self._primary.setdefault(_norm(syns[0]), []).append(i)
            keys = {_norm(s) for s in syns}
            if self._emoji and self._emoji[i]:
                keys.add(self._emoji[i].strip())
            for k in keys:
                self._any.setdefault(k, []).append(i)

    def __len__(self) -> int:
        return len(self._syn)

    def __repr__(self) -> str:
        return f"ClassNames({len(self)} classes: {self._syn[0][0]!r}, ...)"

    @property
    def names(self) -> list[str]:
        """Display names in id order (a fresh list, so callers cannot corrupt a cached instance)."""
        return [s[0] for s in self._syn]

    @property
    def emoji(self) -> list[str] | None:
        return list(self._emoji) if self._emoji is not None else None

    def synonyms(self, i: int) -> list[str]:
        return list(self._syn[self._check_id(i)])

    def name(self, i: int) -> str:
        """Display name of class ``i``; a bad id is a user error, not an IndexError."""
        return self._syn[self._check_id(i)][0]

    def _check_id(self, i: Any) -> int:
        if isinstance(i, bool):
            raise InvalidInputError(f"class id must be an integer, got {i!r}")
        try:
            i = operator.index(i)
        except TypeError:
            raise InvalidInputError(f"class id must be an integer, got {type(i).__name__}") from None
        if not 0 <= i < len(self._syn):
            raise InvalidInputError(f"class id {i} is out of range; valid ids are 0..{len(self._syn) - 1}")
        return i

    def _describe(self, i: int) -> str:
        return f"{i} ({', '.join(self._syn[i][:3])})"

    def _lookup(self, key: str) -> list[int] | None:
        return self._primary.get(key) or self._any.get(key)

    def resolve(self, x: int | str) -> int:
        """Class id from an id, a numeric string, a synonym (any case/spacing) or an emoji."""
        if not isinstance(x, str):
            return self._check_id(x)
        text = x.strip()
        if _INT.fullmatch(text):
            return self._check_id(int(text))
        key = _norm(text)
        if not key:
            raise InvalidInputError("empty class name")
        hits = self._lookup(key) or self._lookup(text)
        if hits:
            if len(hits) > 1:
                options = _join_or([self._describe(i) for i in hits])
                raise InvalidInputError(f"{text!r} is ambiguous: {options}; use the id")
            return hits[0]
        close = self._close(key, 5)
        hint = f"; did you mean {_join_or([repr(n) + f' ({i})' for i, n in close])}?" if close else ""
        raise UnknownNameError(f"unknown class {text!r}{hint} (use a name or an id 0..{len(self) - 1})")

    def _close(self, key: str, n: int) -> list[tuple[int, str]]:
        """Up to ``n`` fuzzy matches as (id, display name), one per class."""
        out: list[tuple[int, str]] = []
        for match in difflib.get_close_matches(key, list(self._any), n=n * 3, cutoff=0.6):
            for i in self._any[match]:
                if all(i != j for j, _ in out):
                    out.append((i, self._syn[i][0]))
        return out[:n]

    def resolve_many(self, spec: str | int | Sequence[int | str]) -> list[int]:
        """Ids for "golden retriever, 207; tabby cat" or a list; order and repeats are kept."""
        if isinstance(spec, str):
            out: list[int] = []
            for chunk in spec.split(";"):
                out.extend(self._resolve_commas([p.strip() for p in chunk.split(",")]))
            return out
        if isinstance(spec, (list, tuple)):
            return [self.resolve(x) for x in spec]
        return [self.resolve(spec)]

    def _resolve_commas(self, parts: list[str]) -> list[int]:
        """Comma pieces; adjacent pieces are rejoined when that spells a name with commas
        (emoji names such as "family: man, woman, boy")."""
        out: list[int] = []
        k = 0
        while k < len(parts):
            for end in range(min(len(parts), k + _MAX_COMMA_PIECES), k + 1, -1):
                joined = _norm(", ".join(parts[k:end]))
                hits = self._lookup(joined)
                if hits and len(hits) == 1:
                    out.append(hits[0])
                    k = end
                    break
            else:
                if parts[k]:
                    out.append(self.resolve(parts[k]))
                k += 1
        return out

    def search(self, query: str, limit: int = 20) -> list[tuple[int, str]]:
        """(id, display name) for a class picker: exact/prefix/substring hits first, then fuzzy."""
        if limit <= 0:
            return []
        text = query.strip()
        if not text:
            return [(i, s[0]) for i, s in enumerate(self._syn[:limit])]
        out: list[tuple[int, str]] = []
        seen: set[int] = set()

        def add(i: int) -> None:
            if i not in seen and len(out) < limit:
                seen.add(i)
                out.append((i, self._syn[i][0]))

        if _INT.fullmatch(text) and 0 <= int(text) < len(self):
            add(int(text))
        key = _norm(text)
        ranked: list[tuple[int, int]] = []  # (rank, id)
        for i, syns in enumerate(self._syn):
            best = None
            for j, s in enumerate(syns):
                n = _norm(s)
                pos = n.find(key)
                if pos < 0:
                    continue
                rank = (0 if n == key else 1 if pos == 0 else 2) * 2 + (j > 0)
                best = rank if best is None else min(best, rank)
            if self._emoji and self._emoji[i] and self._emoji[i].strip() == text:
                best = 0
            if best is not None:
                ranked.append((best, i))
        for _, i in sorted(ranked):
            add(i)
        for i, _ in self._close(key, limit):
            add(i)
        return out


@lru_cache(maxsize=1)
def _imagenet() -> ClassNames:
    return _from_json(IMAGENET_JSON)


def _from_json(path: Path) -> ClassNames:
    if not path.is_file():
        raise MissingFileError(f"class-name file not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InvalidInputError(f"cannot read class names from {path}: {e}") from None
    if not isinstance(data, list) or not data:
        raise InvalidInputError(f"{path}: expected a non-empty JSON list of class names")
    names: list[Any] = []
    emoji: list[str] = []
    for i, entry in enumerate(data):
        if isinstance(entry, dict):
            name = entry.get("name")
            if not isinstance(name, str) or not name.strip():
                raise InvalidInputError(f"{path}: class {i} has no \"name\" string")
            # One name per object: it may contain commas (emoji names do), so keep it whole.
            names.append([name])
            emoji.append(entry.get("emoji") if isinstance(entry.get("emoji"), str) else "")
        else:
            names.append(entry)
            emoji.append("")
    try:
        return ClassNames(names, emoji if any(emoji) else None)
    except InvalidInputError as e:
        raise InvalidInputError(f"{path}: {e}") from None


def load_class_names(spec: str = "imagenet", base_dir: str | Path | None = None) -> ClassNames:
    """The packaged ImageNet-1k names for "imagenet", else a JSON file (relative to ``base_dir``).

    Accepted files: a list of strings, a list of synonym lists, or a list of
    {"name": ..., "emoji": ...} objects (the bundled emoji model's format).
    """
    if spec.strip().lower() == "imagenet":
        return _imagenet()
    path = Path(spec).expanduser()
    if base_dir is not None and not path.is_absolute():
        path = Path(base_dir) / path
    return _from_json(path)
