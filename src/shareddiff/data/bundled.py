"""The bundled corpus (Python 3.11 docs, PSF licence), tokenized once into a cache folder."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from shareddiff.data.documents import BUNDLED, iter_documents
from shareddiff.data.shards import MANIFEST, load_split, prepare_splits
from shareddiff.data.tokenizer import Tokenizer


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


def load_data_split(path: str | None, tokenizer: Tokenizer, split: str):
    """``split`` of the prepared folder ``path`` (None: the bundled corpus), checked against ``tokenizer``."""
    data_dir = Path(path) if path else prepare_bundled(tokenizer)
    data = load_split(data_dir, split)
    if data.manifest["tokenizer_sha256"] != tokenizer.sha256:
        raise ValueError(
            f"data in {data_dir} was tokenized with another tokenizer than data.tokenizer "
            f"({data.manifest['tokenizer_sha256'][:12]}… vs {tokenizer.sha256[:12]}…); prepare it again "
            "with `shareddiff data prepare --tokenizer ...` or set data.tokenizer to the one it was made with"
        )
    return data
