"""Byte-level BPE tokenizers (Hugging Face ``tokenizers``): the bundled ones, and training new ones."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

BUNDLED_TOKENIZER = Path(__file__).parent / "tokenizer.json"
# Named tokenizers shipped with the package, each trained on its corpus's training split.
BUNDLED_TOKENIZERS = {
    "bundled": BUNDLED_TOKENIZER,  # the bundled corpus, vocab 16384, the default
    "bundled-4k": Path(__file__).parent / "tokenizer-4k.json",  # the bundled corpus, vocab 4096, for tiny CPU models
    # corpus-v2 (docs/data.md), vocab 16384, one token per digit
    "docs-16k-digits": Path(__file__).parent / "tokenizer-docs-16k-digits.json",
}
EOS_TOKEN = "<|endoftext|>"


class Tokenizer:
    """A thin wrapper: ``encode``, ``decode``, ``eos_id``, ``vocab_size`` and a content hash.

    ``split_digits`` puts every digit in a token of its own (the ``tokenizers`` library's ``Digits``
    pre-tokenizer before the file's own), whatever merges the BPE learned: " 5202798" becomes " ", "5",
    "2", ... The vocabulary and ``sha256`` are the file's; only encoding changes (the needle task uses it).
    """

    def __init__(self, path: str | Path | None = None, split_digits: bool = False) -> None:
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import pre_tokenizers

        spec = "bundled" if path is None else str(path)
        self.path = BUNDLED_TOKENIZERS.get(spec, Path(spec))
        if not self.path.is_file():
            raise ValueError(
                f"tokenizer file {str(self.path)!r} does not exist; "
                f"train one with `shareddiff tokenizer train`, or use one of {sorted(BUNDLED_TOKENIZERS)}"
            )
        try:
            self._tok = HFTokenizer.from_file(str(self.path))
        except Exception as err:
            raise ValueError(f"{self.path} is not a tokenizers JSON file ({err})") from err
        eos = self._tok.token_to_id(EOS_TOKEN)
        if eos is None:
            raise ValueError(f"{self.path} has no {EOS_TOKEN} token; train it with `shareddiff tokenizer train`")
        self.eos_id = eos
        self.sha256 = hashlib.sha256(self.path.read_bytes()).hexdigest()
        self.split_digits = split_digits
        if split_digits:
            digits = pre_tokenizers.Digits(individual_digits=True)
            own = self._tok.pre_tokenizer
            self._tok.pre_tokenizer = digits if own is None else pre_tokenizers.Sequence([digits, own])

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Encode many documents in parallel (the Rust library uses every core)."""
        return [e.ids for e in self._tok.encode_batch(texts)]

    def decode(self, ids: Iterable[int]) -> str:
        return self._tok.decode(list(ids))


def train_tokenizer(texts: Iterable[str], vocab_size: int, out: str | Path, split_digits: bool = False) -> Tokenizer:
    """Train a byte-level BPE on ``texts`` and save it as ``out`` (a tokenizer.json).

    ``split_digits`` makes every digit a token of its own (the ``Digits(individual_digits=True)``
    pre-tokenizer before the byte-level one, as LLaMA's tokenizer does), so that numbers are spelled
    digit by digit. The same texts in the same order give a byte-identical file.
    """
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    if vocab_size < 257:
        raise ValueError(f"vocab_size={vocab_size} must be at least 257 (256 bytes + {EOS_TOKEN})")
    tok = HFTokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    if split_digits:
        byte_level = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    tok.pre_tokenizer = byte_level
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(out))
    return Tokenizer(out)
