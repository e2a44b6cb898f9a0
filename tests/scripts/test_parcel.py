"""scripts/parcel.py: a prepared data folder packed into small compressed parts and back, checked."""

import shutil
import sys
from pathlib import Path

import pytest

from shareddiff.data import Tokenizer, load_split, prepare_splits
from tests.conftest import synthetic_documents

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

import parcel


@pytest.fixture
def prepared(tmp_path: Path) -> Path:
    docs = synthetic_documents(40, 200)
    prepare_splits(
        {"train": docs[:30], "val": docs[30:]}, tmp_path / "prep", Tokenizer("bundled-4k"), shard_tokens=2000
    )
    return tmp_path / "prep"


@pytest.mark.parametrize("codec", ["xz", "zstd"])
def test_pack_unpack_round_trip(prepared, tmp_path, codec):
    if codec == "zstd" and shutil.which("zstd") is None:
        pytest.skip("the zstd command is not installed")
    manifest = parcel.pack(prepared, tmp_path / "parcels", codec=codec, part_bytes=1000)
    assert len(manifest["parts"]) > 1 and all(p["bytes"] <= 1000 for p in manifest["parts"])
    again = parcel.pack(prepared, tmp_path / "again", codec=codec, part_bytes=1000)
    assert again["parts"] == manifest["parts"]  # deterministic bytes
    folder = parcel.unpack(tmp_path / "parcels", tmp_path / "dest")
    assert folder == tmp_path / "dest" / "prep"
    for path in prepared.iterdir():
        assert (folder / path.name).read_bytes() == path.read_bytes()
    assert len(load_split(folder, "val")) == len(load_split(prepared, "val"))


def test_unpack_names_a_corrupt_part(prepared, tmp_path):
    manifest = parcel.pack(prepared, tmp_path / "parcels", part_bytes=1000)
    part = tmp_path / "parcels" / manifest["parts"][1]["file"]
    part.write_bytes(part.read_bytes()[:-1] + b"\0")
    with pytest.raises(ValueError, match=f"part {part.name} is missing, corrupt or incomplete"):
        parcel.unpack(tmp_path / "parcels", tmp_path / "dest")


def test_pack_needs_a_prepared_folder(tmp_path):
    with pytest.raises(ValueError, match=r"has no manifest\.json"):
        parcel.pack(tmp_path, tmp_path / "out")


def test_unpack_checks_shards_against_the_data_manifest(prepared, tmp_path):
    shard = next(prepared.glob("train-*.bin"))
    shard.write_bytes(b"\0\0" + shard.read_bytes()[2:])  # altered after `data prepare`
    parcel.pack(prepared, tmp_path / "parcels")
    with pytest.raises(ValueError, match=f"{shard.name}: missing or its sha256 differs from manifest.json"):
        parcel.unpack(tmp_path / "parcels", tmp_path / "dest")


def test_recut_gives_other_part_sizes_of_the_same_stream(prepared, tmp_path):
    first = parcel.pack(prepared, tmp_path / "parcels", part_bytes=1000)
    stream = b"".join((tmp_path / "parcels" / p["file"]).read_bytes() for p in first["parts"])
    (tmp_path / "cut").mkdir()
    for stale in ("prep.tar.xz.099", "prep.tar.xz.1000", "prep.tar.zst.000"):  # an earlier cut's parts: removed
        (tmp_path / "cut" / stale).write_bytes(b"stale")
    (tmp_path / "cut" / "prep2.tar.xz.000").write_bytes(b"kept")  # not this parcel's
    cut = parcel.recut(tmp_path / "parcels", tmp_path / "cut", part_bytes=700)
    sizes = [p["bytes"] for p in cut["parts"]]
    assert sum(sizes) == len(stream) and all(s <= 700 for s in sizes) and len(sizes) > len(first["parts"])
    assert sorted(f.name for f in (tmp_path / "cut").iterdir()) == sorted(
        [p["file"] for p in cut["parts"]] + ["prep.parts.json", "prep2.tar.xz.000"]
    )
    assert {k: v for k, v in cut.items() if k != "parts"} == {k: v for k, v in first.items() if k != "parts"}
    folder = parcel.unpack(tmp_path / "cut", tmp_path / "dest")
    for path in prepared.iterdir():
        assert (folder / path.name).read_bytes() == path.read_bytes()


def test_recut_refuses_a_corrupt_part_its_own_folder_and_a_bad_size(prepared, tmp_path):
    manifest = parcel.pack(prepared, tmp_path / "parcels", part_bytes=1000)
    with pytest.raises(ValueError, match="--part-bytes 0"):
        parcel.recut(tmp_path / "parcels", tmp_path / "cut", part_bytes=0)
    with pytest.raises(ValueError, match="another folder"):
        parcel.recut(tmp_path / "parcels", tmp_path / "parcels", part_bytes=500)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "corpus.parts.json").write_text("{}")
    with pytest.raises(ValueError, match=r"holds another parcel \(corpus\.parts\.json\)"):
        parcel.recut(tmp_path / "parcels", tmp_path / "busy", part_bytes=500)
    with pytest.raises(ValueError, match="--part-bytes 0"):
        parcel.pack(prepared, tmp_path / "zero", part_bytes=0)
    (tmp_path / "parcels" / manifest["parts"][-1]["file"]).unlink()
    with pytest.raises(ValueError, match=f"part {manifest['parts'][-1]['file']} is missing"):
        parcel.recut(tmp_path / "parcels", tmp_path / "cut", part_bytes=500)
    assert not (tmp_path / "cut").exists()  # nothing written before every part checked out
