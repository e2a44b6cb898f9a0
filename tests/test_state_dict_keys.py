"""Checkpoint compatibility: every variant's state_dict has the keys, order and shapes it had before the
attention classes were renamed and restructured (``state_dict_keys.json``, captured from main at 167cba2
with the configs of ``tests/test_model.py``'s ``VARIANTS``), so existing checkpoints and exports load."""

import json
from pathlib import Path

import pytest

from shareddiff import ModelConfig, build_model
from tests.test_model import VARIANTS

EXPECTED = json.loads((Path(__file__).parent / "state_dict_keys.json").read_text())


def test_every_variant_is_covered():
    assert sorted(EXPECTED) == sorted(VARIANTS)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_state_dict_keys_and_shapes_are_unchanged(name):
    config = ModelConfig(
        **{"d_model": 64, "n_layers": 2, "n_heads": 2, "vocab_size": 97, "max_seq_len": 64, **VARIANTS[name]}
    )
    state = build_model(config, device="meta").state_dict()
    assert [(k, list(v.shape)) for k, v in state.items()] == [tuple(kv) for kv in EXPECTED[name].items()]
