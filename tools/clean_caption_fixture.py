"""Record the OFFICIAL LlamaGen prompt cleaning (``language/t5.py``: ``T5Embedder.text_preprocessing``,
i.e. ``clean_caption`` twice) on a list of prompts, as the fixture that ``engine/text/caption_cleaning.py``
is tested against.

The official file is imported from ``--peer-src`` (a LlamaGen checkout outside this repository, never
committed); it needs ``ftfy`` and ``beautifulsoup4``, which arnodes does not depend on, so install them
somewhere else and put that folder on ``--site``. Only the cleaning method is called: no model is loaded.

    G=<LlamaGen mirror>; mkdir -p /tmp/LlamaGen/language && git --git-dir $G show HEAD:language/t5.py \\
        > /tmp/LlamaGen/language/t5.py
    pip install --target /tmp/cleanref ftfy beautifulsoup4
    python tools/clean_caption_fixture.py --peer-src /tmp/LlamaGen --site /tmp/cleanref \\
        --peer-commit ce98ec41803a74a90ce68c40ababa9eaeffeb4ec
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "reference" / "llamagen_t2i" / "clean_caption.json"

# what people type, and what scraped captions hold: each line exercises one or more cleaning rules
PROMPTS = [
    "A blue Porsche 356 parked in front of a yellow brick wall.",
    "a cat,a dog,a bird",
    "masterpiece, best quality, (a red fox:1.2), [snow], {forest}",
    "An astronaut riding a horse on Mars, 4k, 8k, trending on artstation",
    "photo of a lighthouse | sunset | dramatic sky",
    "A bowl of ramen 🍜 with chopsticks",
    "Café au lait on a marble table, crème brûlée beside it",
    "東京 tower at night, neon lights",
    "Ein Hund im Schnee — fotografiert mit 50mm",
    "a “quoted” and ‘single’ word, «guillemets» too",
    "a dash-separated-long-caption-with-many-words",
    "snake_case_caption_words_here",
    "one-two three",
    "visit https://example.com/page?id=3 for more",
    "see www.example.org/images/cat.jpg now",
    "logo by @designer_42 on the site",
    "<b>bold</b> text with <a href='x'>a link</a>",
    "Tom &amp; Jerry &quot;cartoon&quot; style",
    "A%20percent%2Dencoded%20prompt",
    "plus+signs+become+spaces",
    "server at 192.168.0.1 in a rack",
    "product jc6640 and jc6640vc and 6640vc231 and j2d1a2a",
    "a poster 1920x1080 and 10.5×20 and 3х4",
    "free shipping worldwide shipping download free click on here",
    "image.png of a cat, file photo.jpeg, page 12",
    "issue #12 and #12345 and 1234567",
    "\"\"\"SOLD OUT\"\"\" sign... on the door",
    "***sale*** #sale ~~tilde~~ a/b c\\d",
    "a tree . a house",
    "   leading and trailing spaces   ",
    "tabs\tand\nnew lines\\nescaped",
    "ＦＵＬＬ ｗｉｄｔｈ letters",
    "the ﬁrst ﬂower",
    "\"A quoted caption\"",
    "'single quoted'",
    "-leading dash",
    "trailing plus+",
    ".hidden",
    "time stamp 3:45 ",
    "colon : spaced",
    "a <person> standing on a hill",
    "Multiple     spaces    between words",
    "UPPER CASE PROMPT, Mixed Case Words",
    "numbers 1, 2.5, 300 and v1.5",
    "a sign that says 'hello world!'",
    "portrait of a woman; oil painting; rembrandt lighting",
    "a cat/dog hybrid",
    "ㇰ stroke and ㈱ enclosed and ㎏ compat",
    "emoji only 🐱🐶",
    "",
    "Привет мир, a cyrillic caption",
    "caf\u00e9 versus cafe\u0301 (combining accent)",
    "ein „Hund“ und ‚Katze‘ und ‟reversed‟ and ‛this‛",
    "\ufeffa prompt after a byte-order mark",
    "form\x0cfeed and next\u0085line and line\u2028separator",
    "<script>var x = 1;</script>a cat <style>p {color: red}</style>on a mat",
]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--peer-src", required=True, help="a LlamaGen checkout (language/t5.py)")
    p.add_argument("--site", default=None, help="a folder with ftfy and bs4 (pip install --target)")
    p.add_argument("--peer-commit", required=True, help="the checkout's commit, recorded in the fixture")
    p.add_argument("--out", default=str(OUT))
    a = p.parse_args(argv)
    sys.path[:0] = [str(Path(a.peer_src) / "language")] + ([a.site] if a.site else [])
    import ftfy
    from t5 import T5Embedder

    embedder = T5Embedder.__new__(T5Embedder)  # the cleaning needs no model
    embedder.use_text_preprocessing = True
    cases = [{"raw": text, "preprocessed": embedder.text_preprocessing(text)} for text in PROMPTS]
    record = {"source": f"FoundationVision/LlamaGen@{a.peer_commit} language/t5.py "
                        "T5Embedder.text_preprocessing (clean_caption twice)",
              "ftfy": ftfy.__version__, "cases": cases}
    Path(a.out).write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"{len(cases)} cases -> {a.out}")


if __name__ == "__main__":
    main()
