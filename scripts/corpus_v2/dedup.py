"""De-duplication for the corpus-v2 build: exact documents, near-duplicate documents, repeated paragraphs.

1. Exact: the sha256 of the normalised text (lower case, whitespace collapsed) was seen before.
2. Near: MinHash (datasketch) of word 5-gram shingles; an LSH index finds earlier documents whose
   estimated Jaccard similarity is at least ``threshold`` (0.8 by default; Broder 1997, as in the
   de-duplication of The Pile and of Lee et al. 2022, "Deduplicating training data makes language
   models better").
3. Paragraphs: a paragraph (text between blank lines) of at least ``min_paragraph_chars`` characters
   whose normalised text was already kept once is removed from later documents: the API-reference and
   licence boilerplate that whole-document matching misses (CCNet's paragraph de-duplication,
   Wenzek et al. 2020).

Documents are checked in a fixed order, so the first copy is kept and the result is deterministic.
"""

from __future__ import annotations

import hashlib
import re
import zlib
from dataclasses import dataclass

import numpy as np
from datasketch import MinHash, MinHashLSH

NUM_PERM = 128
SCHEME = "affine32"  # datasketch 2 permutation scheme
SHINGLE_WORDS = 5
WORD = re.compile(r"\w+")
WHITESPACE = re.compile(r"\s+")
PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n")


def normalise(text: str) -> str:
    return WHITESPACE.sub(" ", text).strip().lower()


def _crc32(data: bytes) -> int:
    return zlib.crc32(data)


def minhash_signature(text: str, num_perm: int = NUM_PERM) -> np.ndarray:
    """MinHash values (``num_perm`` uint64) of the set of lower-cased word 5-gram shingles of ``text``."""
    words = WORD.findall(text.lower())
    n = SHINGLE_WORDS
    shingles = {" ".join(words[i : i + n]).encode() for i in range(max(1, len(words) - n + 1))}
    m = MinHash(num_perm=num_perm, hashfunc=_crc32, seed=1, scheme=SCHEME)
    m.update_batch(sorted(shingles))
    return m.hashvalues


@dataclass
class DedupStats:
    documents: int = 0
    exact: int = 0
    near: int = 0
    chars_in: int = 0
    paragraph_chars_removed: int = 0
    too_short_after: int = 0


class Deduplicator:
    """Keeps the first of each exact or near-duplicate group of documents and the first of each paragraph."""

    def __init__(
        self, threshold: float = 0.8, num_perm: int = NUM_PERM, min_paragraph_chars: int = 40, min_chars: int = 200
    ) -> None:
        self.threshold, self.num_perm = threshold, num_perm
        self.min_paragraph_chars, self.min_chars = min_paragraph_chars, min_chars
        self.lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
        self.exact: set[bytes] = set()
        self.paragraphs: set[bytes] = set()
        self.signatures: dict[str, MinHash] = {}

    def _near_duplicate(self, key: str, signature: np.ndarray) -> bool:
        m = MinHash(num_perm=self.num_perm, hashvalues=signature, seed=1, scheme=SCHEME)
        for other in self.lsh.query(m):
            if m.jaccard(self.signatures[other]) >= self.threshold:
                return True
        self.lsh.insert(key, m)
        self.signatures[key] = m
        return False

    def _drop_repeated_paragraphs(self, text: str) -> tuple[str, int]:
        kept, removed = [], 0
        for paragraph in PARAGRAPH_BREAK.split(text):
            norm = normalise(paragraph)
            if len(norm) >= self.min_paragraph_chars:
                digest = hashlib.sha256(norm.encode()).digest()[:12]
                if digest in self.paragraphs:
                    removed += len(paragraph)
                    continue
                self.paragraphs.add(digest)
            kept.append(paragraph)
        return "\n\n".join(kept).strip(), removed

    def add(self, key: str, text: str, signature: np.ndarray, stats: DedupStats) -> str | None:
        """The text to keep for document ``key`` (repeated paragraphs removed), or None to drop it."""
        stats.documents += 1
        stats.chars_in += len(text)
        digest = hashlib.sha256(normalise(text).encode()).digest()
        if digest in self.exact:
            stats.exact += 1
            return None
        self.exact.add(digest)
        if self._near_duplicate(key, signature):
            stats.near += 1
            return None
        kept, removed = self._drop_repeated_paragraphs(text)
        stats.paragraph_chars_removed += removed
        if len(kept) < self.min_chars:
            stats.too_short_after += 1
            return None
        return kept
