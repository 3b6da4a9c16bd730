"""Class-name lookup: ids, synonyms, forgiving spelling and clear errors."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from arnodes.engine.classes import ClassNames, load_class_names
from arnodes.engine.errors import InvalidInputError, MissingFileError, UnknownNameError


@pytest.fixture(scope="module")
def inet() -> ClassNames:
    return load_class_names()


def test_packaged_imagenet_order(inet: ClassNames) -> None:
    assert len(inet) == 1000
    assert inet.name(0) == "tench"
    assert inet.name(1) == "goldfish"
    assert inet.name(207) == "golden retriever"
    assert inet.name(999) == "toilet tissue"
    assert inet.synonyms(0) == ["tench", "Tinca tinca"]
    assert len(inet.names) == 1000 and inet.names[207] == "golden retriever"
    assert inet.emoji is None


def test_imagenet_is_cached_and_names_copy_is_safe(inet: ClassNames) -> None:
    assert load_class_names("imagenet") is inet
    inet.names[0] = "changed"
    assert inet.name(0) == "tench"


def test_raw_json_is_list_of_synonym_lists() -> None:
    raw = json.loads((Path(__file__).parents[2] / "engine" / "data" / "imagenet_classes.json").read_text())
    assert len(raw) == 1000
    assert all(isinstance(e, list) and e and all(isinstance(s, str) and "," not in s for s in e) for e in raw)
    assert raw[2][:2] == ["great white shark", "white shark"]


@pytest.mark.parametrize("query", [207, "207", " 207 ", "golden retriever", "Golden Retriever",
                                   "golden_retriever", "  golden   retriever "])
def test_resolve_forms(inet: ClassNames, query: int | str) -> None:
    assert inet.resolve(query) == 207


def test_resolve_synonyms(inet: ClassNames) -> None:
    assert inet.resolve("Tinca tinca") == 0
    assert inet.resolve("man-eater") == 2
    assert inet.resolve("tabby cat") == 281
    assert inet.resolve("toilet paper") == 999


def test_display_name_beats_other_synonym(inet: ClassNames) -> None:
    # "tub" is class 876's display name and also a synonym of 435 (bathtub).
    assert inet.resolve("tub") == 876
    assert inet.resolve("bathtub") == 435


@pytest.mark.parametrize("query,ids", [("crane", (134, 517)), ("maillot", (638, 639)),
                                       ("cardigan", (264, 474)), ("panda", (387, 388))])
def test_ambiguous_names_list_candidates(inet: ClassNames, query: str, ids: tuple[int, int]) -> None:
    with pytest.raises(InvalidInputError) as e:
        inet.resolve(query)
    msg = str(e.value)
    assert "ambiguous" in msg and "use the id" in msg
    assert all(str(i) in msg for i in ids)


def test_duplicates_still_reachable_by_id_or_other_synonym(inet: ClassNames) -> None:
    assert inet.name(134) == inet.name(517) == "crane"
    assert inet.resolve("tank suit") == 639
    assert inet.resolve("Cardigan Welsh corgi") == 264


def test_unknown_name_suggests(inet: ClassNames) -> None:
    with pytest.raises(UnknownNameError) as e:
        inet.resolve("golden retreiver")
    assert "golden retriever" in str(e.value) and "207" in str(e.value)
    assert isinstance(e.value, KeyError)
    with pytest.raises(UnknownNameError, match="0..999"):
        inet.resolve("xyzzy qwerty")


@pytest.mark.parametrize("bad", [1000, -1, "1000", "-3"])
def test_out_of_range(inet: ClassNames, bad: int | str) -> None:
    with pytest.raises(InvalidInputError, match="0..999"):
        inet.resolve(bad)


def test_name_errors(inet: ClassNames) -> None:
    with pytest.raises(InvalidInputError, match="0..999"):
        inet.name(1000)
    with pytest.raises(InvalidInputError):
        inet.name(True)
    with pytest.raises(InvalidInputError):
        inet.resolve(2.5)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError):
        inet.resolve("   ")


def test_resolve_many(inet: ClassNames) -> None:
    assert inet.resolve_many("golden retriever, 207; tabby cat") == [207, 207, 281]
    assert inet.resolve_many(["goldfish", 0, "207"]) == [1, 0, 207]
    assert inet.resolve_many("tench,, ;goldfish;") == [0, 1]
    assert inet.resolve_many("") == []
    assert inet.resolve_many(5) == [5]
    with pytest.raises(UnknownNameError):
        inet.resolve_many("goldfish, nosuchthing")
    with pytest.raises(InvalidInputError):
        inet.resolve_many("goldfish; crane")


def test_search(inet: ClassNames) -> None:
    hits = inet.search("retriever")
    ids = [i for i, _ in hits]
    assert {205, 206, 207, 208, 209} <= set(ids[:5])
    assert (207, "golden retriever") in hits
    assert inet.search("goldfish")[0] == (1, "goldfish")  # exact beats substring ("goldfish" only)
    assert inet.search("207")[0] == (207, "golden retriever")
    assert len(inet.search("a", limit=7)) == 7
    assert inet.search("goldn retriver", limit=3)[0][0] == 207  # fuzzy fallback
    assert inet.search("", limit=3) == [(0, "tench"), (1, "goldfish"), (2, "great white shark")]
    assert inet.search("shark", limit=0) == []


def test_custom_plain_strings_split_synonyms() -> None:
    c = ClassNames(["cat, kitty", "dog"])
    assert len(c) == 2 and c.names == ["cat", "dog"]
    assert c.resolve("Kitty") == 0
    with pytest.raises(InvalidInputError):
        ClassNames([])
    with pytest.raises(InvalidInputError):
        ClassNames(["cat", "  "])
    with pytest.raises(InvalidInputError, match="emoji"):
        ClassNames(["cat"], emoji=["a", "b"])


def test_emoji_format_file(tmp_path: Path) -> None:
    classes = [{"name": "grinning face", "emoji": "\U0001F600", "group": "Smileys & Emotion"},
               {"name": "family: man, woman, boy", "emoji": "\U0001F468\u200D\U0001F469\u200D\U0001F466"},
               {"name": "red heart", "emoji": "\u2764\ufe0f"}]
    (tmp_path / "classes.json").write_text(json.dumps(classes, ensure_ascii=False), encoding="utf-8")
    c = load_class_names("classes.json", base_dir=tmp_path)
    assert c.names == ["grinning face", "family: man, woman, boy", "red heart"]
    assert c.emoji is not None and c.emoji[0] == "\U0001F600"
    assert c.resolve("Grinning_Face") == 0
    assert c.resolve("\U0001F600") == 0
    assert c.resolve("family: man, woman, boy") == 1
    # A name with commas survives comma-separated lists.
    assert c.resolve_many("red heart, family: man, woman, boy, 0") == [2, 1, 0]
    assert c.search("heart") == [(2, "red heart")] + c.search("heart")[1:]
    assert load_class_names(str(tmp_path / "classes.json")).names == c.names


def test_list_formats_from_file(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text(json.dumps(["cat", "dog"]))
    (tmp_path / "b.json").write_text(json.dumps([["cat", "kitty"], ["dog", "puppy"]]))
    assert load_class_names(str(tmp_path / "a.json")).resolve("dog") == 1
    assert load_class_names("b.json", base_dir=str(tmp_path)).resolve("puppy") == 1


def test_missing_and_bad_files(tmp_path: Path) -> None:
    with pytest.raises(MissingFileError, match="nope.json"):
        load_class_names("nope.json", base_dir=tmp_path)
    bad = {"broken.json": "{not json", "obj.json": '{"a": 1}', "empty.json": "[]",
           "noname.json": '[{"emoji": "x"}]', "num.json": "[1, 2]"}
    for fname, text in bad.items():
        (tmp_path / fname).write_text(text)
        with pytest.raises(InvalidInputError, match=fname.replace(".", r"\.")):
            load_class_names(fname, base_dir=tmp_path)
