"""The CLIP byte-pair-encoding tokenizer, offline and id-for-id identical to OpenAI CLIP and open_clip.

The merge list ships as package data (`clipjax/assets/bpe_simple_vocab_16e6.txt.gz`, MIT licence in
`clipjax/assets/LICENSE-openai-clip`), so nothing is downloaded. Text is cleaned the way open_clip's
default tokenizer does it (ftfy, HTML unescaping twice, whitespace folding, lower case), split with the
CLIP regular expression, encoded byte-wise and merged by rank.
"""

from __future__ import annotations

import functools
import gzip
import html
import importlib.resources
from collections.abc import Sequence

import ftfy
import numpy as np
import regex

CONTEXT_LENGTH = 77
VOCAB_SIZE = 49408
START_OF_TEXT = "<start_of_text>"
END_OF_TEXT = "<end_of_text>"
_MERGES_FILE = "bpe_simple_vocab_16e6.txt.gz"
# The file holds more merges than CLIP uses; CLIP keeps exactly enough to reach a 49,408-token vocabulary
# (256 bytes, 256 word-final bytes, the merges, 2 special tokens).
_NUM_MERGES = VOCAB_SIZE - 2 * 256 - 2
_WORD_END = "</w>"


def _byte_alphabet() -> dict[int, str]:
    """Maps every byte to a printable unicode character, so BPE never sees whitespace or control bytes.

    Printable Latin-1 bytes map to themselves; the rest map, in byte order, to chr(256), chr(257), ...
    The insertion order of the returned dict is the order of the first 256 vocabulary entries.
    """
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    alphabet = {byte: chr(byte) for byte in printable}
    for byte in range(256):
        if byte not in alphabet:
            alphabet[byte] = chr(256 + len(alphabet) - len(printable))
    return alphabet


def clean_text(text: str) -> str:
    """Repairs mojibake, unescapes HTML (twice, as CLIP does), folds whitespace and lower-cases."""
    # Printable ASCII without "&" is what ftfy and unescaping leave unchanged (mojibake, curly quotes,
    # control and terminal escapes all need other characters): most web captions skip the slow path.
    if not (text.isascii() and text.isprintable() and "&" not in text):
        text = html.unescape(html.unescape(ftfy.fix_text(text)))
    return " ".join(text.split()).lower()


_CACHE_WORDS = 200_000  # merged words remembered; the cache restarts when full


class Tokenizer:
    """CLIP BPE tokenizer: `encode` gives the ids of one text without start/end tokens."""

    def __init__(self) -> None:
        merges_path = importlib.resources.files("clipjax") / "assets" / _MERGES_FILE
        with merges_path.open("rb") as raw, gzip.open(raw) as merges_file:
            lines = merges_file.read().decode("utf-8").split("\n")
        merges = [tuple(line.split()) for line in lines[1 : _NUM_MERGES + 1]]
        self._byte_alphabet = _byte_alphabet()
        symbols = list(self._byte_alphabet.values())
        vocab = symbols + [s + _WORD_END for s in symbols] + ["".join(m) for m in merges]
        vocab += [START_OF_TEXT, END_OF_TEXT]
        if len(vocab) != VOCAB_SIZE:
            raise ValueError(f"{_MERGES_FILE} gives a vocabulary of {len(vocab)}, expected {VOCAB_SIZE}")
        self._ids = {token: i for i, token in enumerate(vocab)}
        self._tokens = vocab
        self._ranks = {merge: rank for rank, merge in enumerate(merges)}
        # Special tokens written literally in a text stay whole, as in OpenAI's tokenizer.
        self._cache = {START_OF_TEXT: START_OF_TEXT, END_OF_TEXT: END_OF_TEXT}
        self._pattern = regex.compile(
            rf"{START_OF_TEXT}|{END_OF_TEXT}|'s|'t|'re|'ve|'m|'ll|'d|[\p{{L}}]+|[\p{{N}}]|[^\s\p{{L}}\p{{N}}]+",
            regex.IGNORECASE,
        )
        self.start_id = self._ids[START_OF_TEXT]
        self.end_id = self._ids[END_OF_TEXT]

    def _merge(self, word: str) -> str:
        """Applies the BPE merges to one pre-token; returns its symbols joined by spaces."""
        cached = self._cache.get(word)
        if cached is not None:
            return cached
        symbols = [*word[:-1], word[-1] + _WORD_END]
        while len(symbols) > 1:
            pairs = set(zip(symbols, symbols[1:]))
            best = min(pairs, key=lambda pair: self._ranks.get(pair, _NUM_MERGES))
            if best not in self._ranks:
                break
            merged: list[str] = []
            i = 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    merged.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        result = " ".join(symbols)
        if len(self._cache) >= _CACHE_WORDS:  # a billion captions hold more distinct words than fit in memory
            self._cache = {START_OF_TEXT: START_OF_TEXT, END_OF_TEXT: END_OF_TEXT}
        self._cache[word] = result
        return result

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` (cleaned first), without the start and end tokens."""
        ids: list[int] = []
        for piece in self._pattern.findall(clean_text(text)):
            word = "".join(self._byte_alphabet[b] for b in piece.encode("utf-8"))
            ids.extend(self._ids[symbol] for symbol in self._merge(word).split(" "))
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids` (special tokens and padding zeros dropped); word ends become spaces."""
        byte_of = {char: byte for byte, char in self._byte_alphabet.items()}
        special = {0, self.start_id, self.end_id}
        text = "".join(self._tokens[int(i)] for i in ids if int(i) not in special)
        # Rebuild byte by byte: a multi-byte character may be split across tokens.
        raw = bytearray()
        for char in text.replace(_WORD_END, " "):
            raw.extend(b" " if char == " " else bytes([byte_of[char]]))
        return raw.decode("utf-8", errors="replace").strip()


@functools.lru_cache(maxsize=1)
def default_tokenizer() -> Tokenizer:
    """The process-wide tokenizer (building it parses the merge list once, about half a second)."""
    return Tokenizer()


def tokenize(texts: str | Sequence[str], context_length: int = CONTEXT_LENGTH) -> np.ndarray:
    """Tokenises texts the way OpenAI CLIP and open_clip do.

    Args:
      texts: one string or a sequence of N strings.
      context_length: length of every row; longer texts are truncated with the end token kept last.

    Returns:
      int32 array [N, context_length]: start token 49406, the text's ids, end token 49407, then zeros.
    """
    if isinstance(texts, str):
        texts = [texts]
    if context_length < 2:
        raise ValueError(f"context_length must be at least 2 (start and end tokens), got {context_length}")
    tokenizer = default_tokenizer()
    out = np.zeros((len(texts), context_length), dtype=np.int32)
    for row, text in enumerate(texts):
        ids = [tokenizer.start_id, *tokenizer.encode(text)][: context_length - 1] + [tokenizer.end_id]
        out[row, : len(ids)] = ids
    return out
