"""Corpus, tokenizer, token shards, deterministic loaders, and the synthetic needle retrieval mixture."""

from shareddiff.data.documents import BUNDLED, iter_documents
from shareddiff.data.loader import WindowLoader, eval_windows
from shareddiff.data.needle import NeedleBuilder, NeedleMix, parse_mix
from shareddiff.data.shards import TokenData, load_split, prepare_splits, split_by_hash
from shareddiff.data.tokenizer import BUNDLED_TOKENIZER, Tokenizer, train_tokenizer

__all__ = [
    "BUNDLED",
    "BUNDLED_TOKENIZER",
    "NeedleBuilder",
    "NeedleMix",
    "TokenData",
    "Tokenizer",
    "WindowLoader",
    "eval_windows",
    "iter_documents",
    "load_split",
    "parse_mix",
    "prepare_splits",
    "split_by_hash",
    "train_tokenizer",
]
