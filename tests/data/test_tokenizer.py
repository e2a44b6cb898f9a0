"""Tokenizers: the bundled ones, training one, errors."""

import pytest

from shareddiff.data import Tokenizer, train_tokenizer
from tests.conftest import synthetic_documents


@pytest.mark.parametrize(("name", "vocab"), [("bundled", 16384), ("bundled-4k", 4096), (None, 16384)])
def test_bundled_tokenizers(name, vocab):
    tok = Tokenizer(name)
    assert tok.vocab_size == vocab
    text = "def foo(x):\n    return x  # héllo, wörld"
    assert tok.decode(tok.encode(text)) == text
    assert tok.eos_id == 0 and len(tok.sha256) == 64


def test_train_tokenizer(tmp_path):
    tok = train_tokenizer(synthetic_documents(20, 50), 280, tmp_path / "t.json")
    assert tok.vocab_size == 280
    assert Tokenizer(tmp_path / "t.json").sha256 == tok.sha256
    with pytest.raises(ValueError, match="vocab_size=100 must be at least 257"):
        train_tokenizer(["x"], 100, tmp_path / "u.json")


def test_bad_tokenizer_files(tmp_path):
    with pytest.raises(ValueError, match="does not exist; train one with `shareddiff tokenizer train`"):
        Tokenizer(tmp_path / "none.json")
    (tmp_path / "junk.json").write_text("{not json")
    with pytest.raises(ValueError, match="is not a tokenizers JSON file"):
        Tokenizer(tmp_path / "junk.json")
