"""Reading documents from every supported input format."""

import json
import lzma

import pytest

from shareddiff.data.documents import BUNDLED, expand_inputs, iter_documents


def test_formats(tmp_path):
    (tmp_path / "a.txt").write_text("plain text")
    folder = tmp_path / "docs"
    (folder / "sub").mkdir(parents=True)
    (folder / "b.md").write_text("markdown")
    (folder / "sub" / "c.rst").write_text("rest")
    (folder / "skip.png").write_bytes(b"\x89PNG")
    (tmp_path / "d.jsonl").write_text(json.dumps({"text": "row one"}) + "\n\n" + json.dumps({"text": "row two"}) + "\n")
    with lzma.open(tmp_path / "e.jsonl.xz", "wt") as f:
        f.write(json.dumps({"text": "compressed"}) + "\n")
    docs = list(iter_documents([tmp_path / "a.txt", folder, tmp_path / "d.jsonl", tmp_path / "e.jsonl.xz"]))
    assert docs == ["plain text", "markdown", "rest", "row one", "row two", "compressed"]


def test_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["x", None, "y"], "id": [1, 2, 3]}), tmp_path / "t.parquet")
    assert list(iter_documents([tmp_path / "t.parquet"])) == ["x", "y"]
    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "u.parquet")
    with pytest.raises(ValueError, match=r"no 'text' column"):
        list(iter_documents([tmp_path / "u.parquet"]))


def test_bad_inputs_are_named(tmp_path):
    with pytest.raises(ValueError, match=r"does not exist"):
        expand_inputs([tmp_path / "missing.txt"])
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"txt": "wrong field"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: expected an object with a string \"text\" field"):
        list(iter_documents([tmp_path / "bad.jsonl"]))
    (tmp_path / "broken.jsonl").write_text('{"text": \n')
    with pytest.raises(ValueError, match=r"broken.jsonl:1: not valid JSON"):
        list(iter_documents([tmp_path / "broken.jsonl"]))


def test_bundled_corpus_has_both_splits():
    train = list(iter_documents([BUNDLED["train"]]))
    val = list(iter_documents([BUNDLED["val"]]))
    assert len(train) > 400 and len(val) > 10
    assert sum(map(len, train)) > 10_000_000
    assert not set(train) & set(val)
