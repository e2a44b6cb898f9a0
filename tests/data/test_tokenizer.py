"""Tokenizers: the bundled ones, training one, errors."""

import json

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


def numbered_documents(n_docs: int = 40) -> list[str]:
    """Text where a few numbers repeat often enough for BPE to merge their digits unless told not to."""
    docs = synthetic_documents(n_docs, 30)
    return [f"{doc} In 2024 the value was 31415 and 2024 again; page {i} of 2024." for i, doc in enumerate(docs)]


def test_split_digits_gives_one_token_per_digit(tmp_path):
    """Reference: the text's digits one by one; without --split-digits the same training merges "2024"."""
    split = train_tokenizer(numbered_documents(), 400, tmp_path / "split.json", split_digits=True)
    merged = train_tokenizer(numbered_documents(), 400, tmp_path / "merged.json")
    text = "year 2024, value 31415 and 7 (page 19)"
    ids = split.encode(text)
    assert split.decode(ids) == text
    digit_tokens = [split.decode([i]) for i in ids if any(c.isdigit() for c in split.decode([i]))]
    assert digit_tokens == list("2024314157" + "19")
    assert any(
        len(merged.decode([i]).strip()) > 1 and merged.decode([i]).strip().isdigit() for i in merged.encode(text)
    )


def test_training_is_deterministic(tmp_path):
    """Two trainings on the same documents in the same order write byte-identical tokenizer.json files."""
    a = train_tokenizer(numbered_documents(), 400, tmp_path / "a.json", split_digits=True)
    b = train_tokenizer(numbered_documents(), 400, tmp_path / "b.json", split_digits=True)
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    assert a.sha256 == b.sha256


def test_docs_16k_digits_tokenizer():
    """The shipped corpus-v2 tokenizer: vocab 16384, EOS 0, digits one per token, lossless on mixed text."""
    tok = Tokenizer("docs-16k-digits")
    assert tok.vocab_size == 16384 and tok.eos_id == 0
    text = "In 1999, ``git log -n 25`` printed 3.14159 — naïve café, 漢字 and tabs\there."
    assert tok.decode(tok.encode(text)) == text
    assert [tok.decode([i]) for i in tok.encode("123456789")] == list("123456789")
    assert [tok.decode([i]) for i in tok.encode(" 2048")][-4:] == list("2048")


def test_cli_trains_on_the_training_split_only(tmp_path, monkeypatch):
    """`tokenizer train --val-fraction f` leaves out exactly the documents `data prepare --val-fraction f` holds out."""
    import shareddiff.data
    from shareddiff.cli import main
    from shareddiff.data import split_by_hash

    docs = numbered_documents()
    (tmp_path / "c.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    seen = {}

    def capture(texts, vocab_size, out, split_digits=False):
        seen["texts"], seen["split_digits"] = list(texts), split_digits
        return train_tokenizer(seen["texts"], vocab_size, out, split_digits=split_digits)

    monkeypatch.setattr(shareddiff.data, "train_tokenizer", capture)
    args = [str(tmp_path / "c.jsonl"), "--out", str(tmp_path / "t.json"), "--vocab-size", "300"]
    assert main(["tokenizer", "train", *args, "--split-digits", "--val-fraction", "0.25"]) == 0
    train, val = split_by_hash(docs, 0.25)
    assert val and seen["texts"] == train and seen["split_digits"] is True
