"""CLIP's byte-level BPE tokenizer (the algorithm of OpenAI CLIP's `SimpleTokenizer`), written for Palette.

Every SD text encoder (OpenAI CLIP-L, OpenCLIP ViT-H and ViT-bigG) uses this one vocabulary, so one
tokenizer serves all of them. We read the real merges file that ships in the `clip` package of
`clip-anytorch` (`bpe_simple_vocab_16e6.txt.gz`) and produce the same ids as `transformers.CLIPTokenizer`.

Text cleaning is CLIP's without ftfy: HTML entities unescaped (twice, as CLIP does), Unicode NFC,
whitespace runs collapsed, lower case. ftfy additionally repairs mojibake, straightens curly quotes and
narrows full-width characters; we deliberately do not, so the same prompt tokenizes the same way on
every install (ftfy is optional in A1111's stack too). `transformers`' fast tokenizer does NFC,
whitespace and lower case but no HTML unescaping; the tests compare like for like.
"""
from __future__ import annotations

import gzip
import html
import importlib.util
import unicodedata
from functools import lru_cache
from pathlib import Path

import regex

BOS_ID = 49406  # <|startoftext|>
EOS_ID = 49407  # <|endoftext|>
VOCAB_SIZE = 49408
VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
# 49408 = 256 bytes + 256 bytes with </w> + 48894 merges + 2 specials
NUM_MERGES = VOCAB_SIZE - 2 * 256 - 2

# CLIP's pre-tokenisation: special tokens, English contractions, runs of letters, single digits,
# runs of anything else that is not whitespace.
_WORD_PATTERN = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)
_WHITESPACE = regex.compile(r"\s+")
_SPECIALS = {"<|startoftext|>": BOS_ID, "<|endoftext|>": EOS_ID}
_CACHE_LIMIT = 200_000  # words; a long-running server must not grow without bound


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """Map every byte to a printable character, so BPE works on strings without whitespace or control
    characters. Printable Latin-1 bytes map to themselves; the rest to code points from 256 upwards.
    The dict's order is the order of the first 256 vocabulary entries."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def default_vocab_path() -> Path:
    """The merges file inside the installed `clip` package, found without importing that package
    (importing it pulls in torchvision and `pkg_resources`, which we neither need nor trust to exist)."""
    spec = importlib.util.find_spec("clip")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        candidate = Path(location) / VOCAB_FILE
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"CLIP vocabulary {VOCAB_FILE} not found: install the `clip-anytorch` package (see requirements.txt)"
    )


def load_merges(path: Path | None = None) -> list[tuple[str, str]]:
    """The ranked merge list (best first) from CLIP's gzip file."""
    raw = gzip.decompress(Path(path or default_vocab_path()).read_bytes()).decode("utf-8")
    lines = raw.split("\n")[1 : NUM_MERGES + 1]  # line 0 is a version header
    merges = [tuple(line.split()) for line in lines]
    if len(merges) != NUM_MERGES or any(len(m) != 2 for m in merges):
        raise ValueError(f"{path}: not a CLIP BPE merges file ({len(merges)} merges, expected {NUM_MERGES})")
    return merges  # type: ignore[return-value]


def build_vocab(merges: list[tuple[str, str]]) -> list[str]:
    """Token strings in id order: bytes, bytes ending a word, one entry per merge, then the specials."""
    units = list(bytes_to_unicode().values())
    return units + [u + "</w>" for u in units] + ["".join(m) for m in merges] + list(_SPECIALS)


def clean_text(text: str) -> str:
    """CLIP's basic cleaning without ftfy: unescape HTML, NFC, collapse whitespace, lower case."""
    text = html.unescape(html.unescape(text))
    text = unicodedata.normalize("NFC", text)
    return _WHITESPACE.sub(" ", text).strip().lower()


class CLIPTokenizer:
    """Text → CLIP token ids (without BOS/EOS). Per-word BPE results are cached on the instance."""

    bos_token_id = BOS_ID
    eos_token_id = EOS_ID
    vocab_size = VOCAB_SIZE

    def __init__(self, vocab_path: Path | None = None) -> None:
        merges = load_merges(vocab_path)
        self.vocab: list[str] = build_vocab(merges)
        self.encoder: dict[str, int] = {token: i for i, token in enumerate(self.vocab)}
        self._ranks: dict[tuple[str, str], int] = {pair: i for i, pair in enumerate(merges)}
        self._byte_encoder = bytes_to_unicode()
        self._byte_decoder = {c: b for b, c in self._byte_encoder.items()}
        self._cache: dict[str, tuple[int, ...]] = {}

    @property
    def comma_token_id(self) -> int:
        """Id of "," as a whole word; A1111's comma word-wrap looks for it."""
        return self.encoder[",</w>"]

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` as CLIP produces them, without BOS/EOS and without truncation."""
        ids: list[int] = []
        for word in _WORD_PATTERN.findall(clean_text(text)):
            ids.extend(self._word_ids(word))
        return ids

    def __call__(self, text: str) -> list[int]:
        return self.encode(text)

    def decode(self, ids: list[int]) -> str:
        """Ids back to text (lower case, cleaned); specials are dropped."""
        text = "".join(self.vocab[i] for i in ids if i not in (BOS_ID, EOS_ID))
        data = bytes(self._byte_decoder[c] for c in text)
        return data.decode("utf-8", errors="replace").replace("</w>", " ").strip()

    def _word_ids(self, word: str) -> tuple[int, ...]:
        cached = self._cache.get(word)
        if cached is not None:
            return cached
        if word in _SPECIALS:
            ids: tuple[int, ...] = (_SPECIALS[word],)
        else:
            units = "".join(self._byte_encoder[b] for b in word.encode("utf-8"))
            ids = tuple(self.encoder[part] for part in self.bpe(units))
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[word] = ids
        return ids

    def bpe(self, units: str) -> tuple[str, ...]:
        """Merge the characters of one byte-encoded word, lowest-ranked pair first, until no ranked pair
        is left. The last symbol carries the end-of-word marker `</w>`."""
        parts = [*units[:-1], units[-1] + "</w>"]
        while len(parts) > 1:
            best_rank, best = None, None
            for pair in zip(parts, parts[1:]):
                rank = self._ranks.get(pair)
                if rank is not None and (best_rank is None or rank < best_rank):
                    best_rank, best = rank, pair
            if best is None:
                break
            first, second = best
            merged: list[str] = []
            i = 0
            while i < len(parts):
                if i + 1 < len(parts) and parts[i] == first and parts[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        return tuple(parts)


@lru_cache(maxsize=1)
def default_tokenizer() -> CLIPTokenizer:
    """The tokenizer over the installed vocabulary, built once (it is read-only apart from its cache)."""
    return CLIPTokenizer()
