"""Padding helpers: token masks, positions and the padded attention mask, by hand."""

import pytest
import torch

from shareddiff.padding import check_token_mask, left_pad, padded_attention_mask, token_positions


def test_left_pad_by_hand():
    ids, mask = left_pad([torch.tensor([5, 6, 7]), torch.tensor([8])], pad_id=9)
    assert ids.tolist() == [[5, 6, 7], [9, 9, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    with pytest.raises(ValueError, match="each sequence must be 1-D"):
        left_pad([torch.zeros(2, 2, dtype=torch.long)])
    with pytest.raises(ValueError, match="no sequences to pad"):
        left_pad([])


def test_positions_start_at_each_rows_first_token():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    assert token_positions(mask).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 2, 2], [0, 1, 2, 3, 4]]


def test_padded_attention_mask_by_hand():
    mask = torch.tensor([[0, 1, 1], [1, 1, 1]], dtype=torch.bool)
    full = padded_attention_mask(mask, 0, 3)
    assert full.shape == (2, 1, 3, 3)
    # row 0: the padding query sees only itself; the tokens see the tokens up to themselves, never the padding
    assert full[0, 0].int().tolist() == [[1, 0, 0], [0, 1, 0], [0, 1, 1]]
    assert full[1, 0].int().tolist() == [[1, 0, 0], [1, 1, 0], [1, 1, 1]]
    step = padded_attention_mask(torch.tensor([[0, 1, 1, 1]], dtype=torch.bool), 3, 1)  # one decode step
    assert step[0, 0].int().tolist() == [[0, 1, 1, 1]]


def test_masks_with_holes_or_late_padding_are_refused():
    check_token_mask(torch.tensor([[0, 1, 1, 0], [1, 1, 1, 1], [0, 0, 0, 0]], dtype=torch.bool), cached=False)
    check_token_mask(torch.tensor([[0, 0, 1, 1], [0, 0, 0, 0]], dtype=torch.bool), cached=True)
    with pytest.raises(ValueError, match=r"row\(s\) \[1\] have padding between tokens \(a hole\)"):
        check_token_mask(torch.tensor([[1, 1, 1], [1, 0, 1]], dtype=torch.bool), cached=False)
    with pytest.raises(ValueError, match=r"row\(s\) \[0\] have padding after a token while a KV cache is in use"):
        check_token_mask(torch.tensor([[1, 1, 0], [1, 1, 1]], dtype=torch.bool), cached=True)
