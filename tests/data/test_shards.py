"""Token shards: layout, manifest checks, corruption and empty inputs."""

import numpy as np
import pytest

from shareddiff.data import load_split, prepare_splits, split_by_hash
from shareddiff.data.shards import _dtype_for


def test_round_trip(tmp_path, tiny_tokenizer):
    docs = ["first document.", "", "second one, a bit longer."]
    manifest = prepare_splits({"train": docs, "val": ["held out"]}, tmp_path, tiny_tokenizer, shard_tokens=8)
    assert manifest["tokenizer_sha256"] == tiny_tokenizer.sha256 and manifest["dtype"] == "uint16"
    train = load_split(tmp_path, "train")
    assert manifest["splits"]["train"]["documents"] == 2  # the empty one is skipped
    assert len(train.manifest["splits"]["train"]["shards"]) > 1
    ids = train.window(0, len(train)).tolist()
    expected = [
        *tiny_tokenizer.encode(docs[0]),
        tiny_tokenizer.eos_id,
        *tiny_tokenizer.encode(docs[2]),
        tiny_tokenizer.eos_id,
    ]
    assert ids == expected  # each document followed by EOS, read across shard boundaries


def test_corrupt_shards_are_reported(tmp_path, tiny_tokenizer):
    prepare_splits({"train": ["some text here"] * 5, "val": ["x y"]}, tmp_path, tiny_tokenizer)
    shard = tmp_path / "train-00000.bin"
    data = bytearray(shard.read_bytes())
    data[3] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"corrupt shard .*sha256 differs.*shareddiff data prepare"):
        load_split(tmp_path, "train")
    shard.write_bytes(bytes(data[:-1]))
    with pytest.raises(ValueError, match=r"corrupt shard .*bytes on disk, the manifest says"):
        load_split(tmp_path, "train")
    with pytest.raises(ValueError, match=r"has no 'test' split"):
        load_split(tmp_path, "test")


def test_missing_or_foreign_folder(tmp_path):
    with pytest.raises(ValueError, match=r"has no manifest.json: prepare your text with `shareddiff data prepare"):
        load_split(tmp_path, "train")
    with pytest.raises(ValueError, match=r"nowhere does not exist: set data.path to a folder written by"):
        load_split(tmp_path / "nowhere", "train")


def test_empty_inputs(tmp_path, tiny_tokenizer):
    with pytest.raises(ValueError, match=r"split 'train' has no text"):
        prepare_splits({"train": ["", "  \n"]}, tmp_path, tiny_tokenizer)


def test_split_by_hash_is_deterministic():
    docs = [f"document number {i}" for i in range(400)]
    train, val = split_by_hash(docs, 0.1)
    assert (train, val) == split_by_hash(docs, 0.1)
    assert 15 <= len(val) <= 70 and len(train) + len(val) == 400


def test_dtype_choice():
    assert _dtype_for(16384) == np.uint16 and _dtype_for(65536) == np.uint16 and _dtype_for(100288) == np.uint32


def test_a_tokenizer_mismatch_names_both_tokenizers(tmp_path, tiny_data):
    """Data made with a bundled tokenizer, read with another: the message names both and the setting to fix."""
    import hashlib
    import json
    import re
    import shutil

    from shareddiff.data import Tokenizer
    from shareddiff.data.bundled import load_data_split
    from shareddiff.data.tokenizer import BUNDLED_TOKENIZERS

    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    manifest = json.loads((data / "manifest.json").read_text())
    manifest["tokenizer_sha256"] = hashlib.sha256(BUNDLED_TOKENIZERS["bundled-4k"].read_bytes()).hexdigest()
    (data / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError) as err:
        load_data_split(str(data), Tokenizer("bundled"), "val")
    assert re.search(r"tokenized with bundled-4k, but data.tokenizer is bundled \(.*tokenizer.json\); "
                     r"set data.tokenizer=bundled-4k, or prepare", str(err.value))  # fmt: skip
