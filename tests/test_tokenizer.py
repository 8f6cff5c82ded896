"""Our CLIP tokenizer against `transformers.CLIPTokenizer` built from the same merges file, plus ids
published by CLIP users."""
from __future__ import annotations

import html
import json
import os
import random

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from modules.tokenizer import (  # noqa: E402
    BOS_ID,
    EOS_ID,
    VOCAB_SIZE,
    CLIPTokenizer,
    bytes_to_unicode,
    clean_text,
    default_tokenizer,
    load_merges,
)


@pytest.fixture(scope="module")
def ours() -> CLIPTokenizer:
    return default_tokenizer()


@pytest.fixture(scope="module")
def reference(tmp_path_factory, ours):
    """transformers' tokenizer over vocab.json / merges.txt written here from the same gz file."""
    transformers = pytest.importorskip("transformers")
    folder = tmp_path_factory.mktemp("clip-tokenizer")
    merges = load_merges()
    (folder / "vocab.json").write_text(json.dumps(ours.encoder), encoding="utf-8")
    lines = ["#version: 0.2"] + [" ".join(m) for m in merges]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return transformers.CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)


def reference_ids(reference, text: str) -> list[int]:
    # Like for like, two documented differences of transformers' fast tokenizer from CLIP's Python code:
    # it does not unescape HTML entities (CLIP does, twice), and it lower-cases character by character,
    # so a word-final capital sigma becomes "σ" where Python's str.lower() (CLIP, A1111) gives "ς".
    text = html.unescape(html.unescape(text)).lower()
    return reference(text, add_special_tokens=False)["input_ids"]


WORDS = (
    "masterpiece best quality ultra detailed photo portrait of a woman man girl cat dog fox red blue "
    "green golden hour cinematic lighting 8k uhd dslr bokeh by greg rutkowski artstation trending "
    "highres absurdres 1girl solo looking at viewer smile long hair upper body outdoors night sky "
    "antidisestablishmentarianism supercalifragilisticexpialidocious pneumonoultramicroscopicsilicovolcanoconiosis "
    "don't it's we're they've I'm you'll he'd café naïve résumé façade jalapeño Ångström straße "
    "Überraschung smørrebrød crème brûlée Привет мир здравствуйте Ελληνικά ΟΔΟΣ 東京 日本語 漢字 "
    "한국어 안녕하세요 العربية مرحبا עברית हिन्दी ไทย Tiếng Việt"
).split()
PUNCT = list(",.;:!?()[]{}<>|/\\-_=+*&^%$#@~`'\"") + ["...", "--", "::", ",,", "((", "))", "\u2019", "\u201c", "\u201d"]
EMOJI = ["😀", "🦊", "👍🏽", "❤️", "🏳️‍🌈", "👩‍👩‍👧", "✨", "🔥", "🇯🇵", "™", "©", "°", "½", "²", "€", "£", "¥"]
PROMPTS = [
    "masterpiece, (red fox:1.3), [blurry], ((best quality))",
    "a photo of an astronaut riding a horse on mars, 4k, HDR",
    "score_9, score_8_up, 1girl, <lora:add_detail:0.8>, BREAK, night",
    "(masterpiece:1.2), (best quality:1.1), \\(parenthesised\\) text, embedding:EasyNegative",
    "A & B &amp; C &lt;tag&gt; &#39;quoted&#39; &quot;x&quot; &amp;amp;",
    "  leading   and\ttrailing\n\nwhitespace   ",
    "UPPER lower MiXeD CaSe 12345 3.14159 1,000,000 v2.1 SDXL-1.0 1024x1024",
    "e\u0301 composed? cafe\u0301 vs café, n\u0303 vs ñ",
    "",
    "   ",
    "<|startoftext|>hello<|endoftext|> world",
    # whitespace and control characters of several Unicode categories, ligatures, full width, casing
    "a\x1cb a\u2028b a\u3000b a\xa0b a\u200bb a\x00b a\x7fb x\x85y a\rb",
    "İstanbul ǅ ﬁ ＡＢＣ ß ΣΑΣ ΟΔΟΣ. 'S 'T",
]


def random_strings(count: int, seed: int = 1234) -> list[str]:
    rng = random.Random(seed)
    alphabet_ranges = [(0x20, 0x7E), (0xA0, 0x24F), (0x370, 0x3FF), (0x400, 0x4FF), (0x590, 0x6FF),
                       (0x900, 0x97F), (0x3040, 0x30FF), (0x4E00, 0x4FFF), (0xAC00, 0xAD00), (0x1F300, 0x1F6FF)]
    out = list(PROMPTS)
    while len(out) < count:
        kind = rng.random()
        if kind < 0.5:  # prompt-like: words, punctuation, weights
            parts = []
            for _ in range(rng.randint(1, 25)):
                r = rng.random()
                if r < 0.6:
                    word = rng.choice(WORDS)
                    parts.append(word.upper() if rng.random() < 0.1 else word)
                elif r < 0.75:
                    parts.append(rng.choice(PUNCT))
                elif r < 0.85:
                    parts.append(f"({rng.choice(WORDS)}:{rng.uniform(0, 2):.{rng.randint(1, 3)}f})")
                elif r < 0.93:
                    parts.append(rng.choice(EMOJI))
                else:
                    parts.append(str(rng.randint(0, 10 ** rng.randint(1, 9))))
            sep = rng.choice([" ", ", ", ",", " ", "  ", "\n", "_"])
            out.append(sep.join(parts))
        elif kind < 0.8:  # character soup from several scripts
            lo, hi = rng.choice(alphabet_ranges)
            out.append("".join(chr(rng.randint(lo, hi)) for _ in range(rng.randint(1, 40))))
        else:  # long made-up words (many merges)
            letters = "abcdefghijklmnopqrstuvwxyzäöüéèçñ"
            out.append(" ".join("".join(rng.choice(letters) for _ in range(rng.randint(8, 40)))
                                for _ in range(rng.randint(1, 4))))
    return out


def test_vocabulary_layout(ours):
    assert len(ours.vocab) == VOCAB_SIZE == 49408
    assert ours.encoder["<|startoftext|>"] == BOS_ID == 49406
    assert ours.encoder["<|endoftext|>"] == EOS_ID == 49407
    assert ours.vocab[0] == "!" and ours.vocab[256] == "!</w>"  # bytes in CLIP's printable-first order
    assert len(set(bytes_to_unicode().values())) == 256
    assert ours.comma_token_id == 267


@pytest.mark.parametrize(
    ("text", "ids"),
    [
        # Published in CLIP tokenizer tests of several independent projects (Bumblebee, tokenizer ports).
        ("a photo of a cat", [320, 1125, 539, 320, 2368]),
        ("a photo of a dog", [320, 1125, 539, 320, 1929]),
        ("Hello, world!", [3306, 267, 1002, 256]),
        ("A PHOTO of  a Cat!", [320, 1125, 539, 320, 2368, 256]),
        ("    a    photo  of  a cat    ", [320, 1125, 539, 320, 2368]),
        ("", []),
    ],
)
def test_known_ids(ours, text, ids):
    assert ours.encode(text) == ids


def test_matches_transformers_on_1000_plus_strings(ours, reference):
    corpus = random_strings(1200)
    assert len(corpus) >= 1000
    mismatches = [(s, ours.encode(s), reference_ids(reference, s)) for s in corpus]
    mismatches = [m for m in mismatches if m[1] != m[2]]
    assert not mismatches, f"{len(mismatches)} mismatches, first: {mismatches[:3]!r}"


def test_html_entities_are_unescaped_like_clip(ours):
    # CLIP's basic_clean unescapes twice; transformers' fast tokenizer does not (documented difference).
    assert ours.encode("fish &amp; chips") == ours.encode("fish & chips")
    assert ours.encode("fish &amp;amp; chips") == ours.encode("fish & chips")
    assert clean_text("  A&nbsp;B\t\nC ") == "a\xa0b c".replace("\xa0", " ")


def test_final_sigma_follows_python_lower(ours):
    # CLIP and A1111 lower-case with str.lower(), which knows the word-final sigma.
    assert ours.encode("ΟΔΟΣ") == ours.encode("οδος")
    assert ours.encode("ΟΔΟΣ") != ours.encode("οδοσ")


def test_nfc_normalisation(ours):
    assert ours.encode("cafe\u0301") == ours.encode("café")


def test_word_cache_and_decode(ours):
    first = ours.encode("supercalifragilistic fox")
    assert "supercalifragilistic" in ours._cache
    assert ours.encode("supercalifragilistic fox") == first
    assert ours.decode([BOS_ID, *first, EOS_ID]) == "supercalifragilistic fox"


def test_fresh_instance_equals_shared(ours):
    assert CLIPTokenizer().encode("(red fox:1.3), masterpiece") == ours.encode("(red fox:1.3), masterpiece")
