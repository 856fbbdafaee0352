"""asr.nn.masks against hand-written matrices (True = masked)."""

import pytest
import torch

from asr.nn.masks import chunked_mask, combine_with_padding, limited_context_mask, padding_mask

# Written out by hand: 1 = masked, 0 = visible; rows are queries, columns keys.


def as_bool(rows):
    return torch.tensor(rows, dtype=torch.bool)


def test_padding_mask():
    expected = as_bool([[0, 0, 0, 1], [0, 1, 1, 1], [0, 0, 0, 0]])
    assert torch.equal(padding_mask(torch.tensor([3, 1, 4])), expected)
    assert padding_mask(torch.tensor([2]), max_len=5).tolist() == [[False, False, True, True, True]]
    with pytest.raises(ValueError, match="shorter"):
        padding_mask(torch.tensor([4]), max_len=3)


def test_limited_context_left1_right2():
    expected = as_bool(
        [
            [0, 0, 0, 1, 1, 1],
            [0, 0, 0, 0, 1, 1],
            [1, 0, 0, 0, 0, 1],
            [1, 1, 0, 0, 0, 0],
            [1, 1, 1, 0, 0, 0],
            [1, 1, 1, 1, 0, 0],
        ]
    )
    assert torch.equal(limited_context_mask(6, left=1, right=2), expected)


def test_limited_context_causal_and_unlimited():
    causal = as_bool([[0, 1, 1, 1], [0, 0, 1, 1], [0, 0, 0, 1], [0, 0, 0, 0]])
    assert torch.equal(limited_context_mask(4, left=-1, right=0), causal)
    assert not limited_context_mask(4, left=-1, right=-1).any()
    left_only = as_bool([[0, 0, 0, 0], [0, 0, 0, 0], [1, 0, 0, 0], [1, 1, 0, 0]])
    assert torch.equal(limited_context_mask(4, left=1, right=-1), left_only)


def test_chunked_with_one_left_chunk():
    # chunks {0,1} {2,3} {4,5} {6}; each sees itself and one chunk to the left.
    expected = as_bool(
        [
            [0, 0, 1, 1, 1, 1, 1],
            [0, 0, 1, 1, 1, 1, 1],
            [0, 0, 0, 0, 1, 1, 1],
            [0, 0, 0, 0, 1, 1, 1],
            [1, 1, 0, 0, 0, 0, 1],
            [1, 1, 0, 0, 0, 0, 1],
            [1, 1, 1, 1, 0, 0, 0],
        ]
    )
    assert torch.equal(chunked_mask(7, chunk_size=2, left_chunks=1), expected)


def test_chunked_all_left_and_full():
    expected = as_bool(
        [
            [0, 0, 0, 1, 1],
            [0, 0, 0, 1, 1],
            [0, 0, 0, 1, 1],
            [0, 0, 0, 0, 0],
            [0, 0, 0, 0, 0],
        ]
    )
    assert torch.equal(chunked_mask(5, chunk_size=3, left_chunks=-1), expected)
    assert not chunked_mask(5, chunk_size=-1).any()
    with pytest.raises(ValueError):
        chunked_mask(5, chunk_size=2, left_chunks=-2)


def test_combined_with_padding():
    structural = chunked_mask(4, chunk_size=2, left_chunks=0)
    combined = combine_with_padding(structural, padding_mask(torch.tensor([4, 3])))
    expected = torch.stack(
        [
            as_bool([[0, 0, 1, 1], [0, 0, 1, 1], [1, 1, 0, 0], [1, 1, 0, 0]]),
            as_bool([[0, 0, 1, 1], [0, 0, 1, 1], [1, 1, 0, 1], [1, 1, 0, 1]]),
        ]
    )
    assert torch.equal(combined, expected)
    limited = combine_with_padding(limited_context_mask(3, 0, 1), padding_mask(torch.tensor([2]), max_len=3))
    assert torch.equal(limited[0], as_bool([[0, 0, 1], [1, 0, 1], [1, 1, 1]]))
    only_padding = combine_with_padding(None, padding_mask(torch.tensor([1, 2])))
    assert only_padding.shape == (2, 2, 2) and only_padding[0].tolist() == [[False, True], [False, True]]
    assert combine_with_padding(None, None) is None
    with pytest.raises(ValueError, match="frames"):
        combine_with_padding(limited_context_mask(3, 0, 1), padding_mask(torch.tensor([2])))
