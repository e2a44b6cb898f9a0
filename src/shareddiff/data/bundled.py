"""The bundled corpus (Python 3.11 docs, PSF licence), tokenized once into a cache folder."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from shareddiff.data.documents import BUNDLED, iter_documents
from shareddiff.data.shards import MANIFEST, load_split, prepare_splits
from shareddiff.data.tokenizer import BUNDLED_TOKENIZERS, Tokenizer


def cache_root() -> Path:
    return Path(os.environ.get("SHAREDDIFF_CACHE", Path.home() / ".cache" / "shareddiff"))


def prepare_bundled(tokenizer: Tokenizer) -> Path:
    """Token shards of the bundled corpus for ``tokenizer``, prepared on first use (a few seconds).

    Prepared in a temporary folder and renamed into place, so concurrent processes never see half of it.
    """
    target = cache_root() / "data" / f"python311-docs-{tokenizer.sha256[:16]}"
    if (target / MANIFEST).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".prepare-"))
    try:
        prepare_splits(
            {split: iter_documents([path]) for split, path in BUNDLED.items()},
            tmp,
            tokenizer,
            sources=[f"bundled:{path.name}" for path in BUNDLED.values()],
        )
        try:
            os.replace(tmp, target)
        except OSError:  # another process finished first
            if not (target / MANIFEST).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _tokenizer_name(sha256: str) -> str:
    """The bundled tokenizer whose file has this hash, else a description with the hash's start."""
    for name, path in BUNDLED_TOKENIZERS.items():
        if path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() == sha256:
            return name
    return f"a tokenizer not shipped with the package (sha256 {sha256[:12]}…)"


def load_data_split(path: str | None, tokenizer: Tokenizer, split: str):
    """``split`` of the prepared folder ``path`` (None: the bundled corpus), checked against ``tokenizer``."""
    data_dir = Path(path) if path else prepare_bundled(tokenizer)
    data = load_split(data_dir, split)
    if data.manifest["tokenizer_sha256"] != tokenizer.sha256:
        made_with, given = (_tokenizer_name(h) for h in (data.manifest["tokenizer_sha256"], tokenizer.sha256))
        fix = f"data.tokenizer={made_with}" if made_with in BUNDLED_TOKENIZERS else "data.tokenizer to its file"
        raise ValueError(
            f"data in {data_dir} was tokenized with {made_with}, but data.tokenizer is {given} "
            f"({tokenizer.path}); set {fix}, or prepare the data again with `shareddiff data prepare --tokenizer ...`"
        )
    return data
