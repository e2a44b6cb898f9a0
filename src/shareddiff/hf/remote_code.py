"""The code files an exported ``shareddiff`` folder carries so that transformers loads it by itself.

``config.json``'s ``auto_map`` names ``configuration_shareddiff.ShareddiffConfig`` and
``modeling_shareddiff.ShareddiffForCausalLM``; with ``trust_remote_code=True`` transformers imports those
files from the folder (its "custom models" mechanism, as models on the Hub ship their code). They hold no
model code: each subclasses the installed ``shareddiff`` package's class, and says ``pip install shareddiff``
when the package is absent.
"""

from __future__ import annotations

from pathlib import Path

AUTO_MAP = {
    "AutoConfig": "configuration_shareddiff.ShareddiffConfig",
    "AutoModelForCausalLM": "modeling_shareddiff.ShareddiffForCausalLM",
}

_MISSING = """try:
    from shareddiff.hf.modeling import {names}
except ModuleNotFoundError as error:
    if error.name != "shareddiff":
        raise
    raise ImportError(
        "this model's code is the shareddiff package (the Shared DIFF Transformer, arXiv 2501.17900), which is not "
        "installed: run `pip install shareddiff` (with transformers: `pip install 'shareddiff[hf]'`)"
    ) from error
"""

CONFIGURATION = f'''"""The shareddiff model's config: the installed shareddiff package's, under this folder's name."""

{_MISSING.format(names="ShareddiffConfig as _ShareddiffConfig")}

class ShareddiffConfig(_ShareddiffConfig):
    """shareddiff's ``ShareddiffConfig``."""
'''

MODELING = f'''"""The shareddiff model: the installed shareddiff package's, under this folder's name."""

{_MISSING.format(names="ShareddiffForCausalLM as _ShareddiffForCausalLM")}
from .configuration_shareddiff import ShareddiffConfig


class ShareddiffForCausalLM(_ShareddiffForCausalLM):
    """shareddiff's ``ShareddiffForCausalLM``."""

    config_class = ShareddiffConfig
'''


def write_remote_code(folder: Path) -> None:
    """Write ``configuration_shareddiff.py`` and ``modeling_shareddiff.py`` (the files ``AUTO_MAP`` names) into
    ``folder``."""
    (folder / "configuration_shareddiff.py").write_text(CONFIGURATION)
    (folder / "modeling_shareddiff.py").write_text(MODELING)
