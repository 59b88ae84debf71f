"""Two-hot action encoding: exact round trip, one unit of weight per dimension, clipping."""

from __future__ import annotations

import pytest
import torch

from sop.world.two_hot import two_hot_decode, two_hot_encode


def test_round_trip_is_exact_inside_the_range() -> None:
    actions = torch.rand(64, 4) * 2 - 1
    codes = two_hot_encode(actions, 21)
    assert codes.shape == (64, 4 * 21)
    torch.testing.assert_close(two_hot_decode(codes, 21), actions, atol=1e-6, rtol=0)
    blocks = codes.reshape(64, 4, 21)
    torch.testing.assert_close(blocks.sum(-1), torch.ones(64, 4))
    assert int((blocks > 0).sum(-1).max()) <= 2  # at most two bins are hot


def test_bin_centres_are_one_hot_and_outside_values_clip() -> None:
    codes = two_hot_encode(torch.tensor([[-1.0, 0.0, 1.0, 3.0]]), 21).reshape(4, 21)
    assert codes[0, 0] == 1 and codes[1, 10] == 1 and codes[2, 20] == 1 and codes[3, 20] == 1
    torch.testing.assert_close(
        two_hot_decode(codes.reshape(1, -1), 21), torch.tensor([[-1.0, 0.0, 1.0, 1.0]])
    )


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 2 bins"):
        two_hot_encode(torch.zeros(1, 4), 1)
    with pytest.raises(ValueError, match="whole number"):
        two_hot_decode(torch.zeros(1, 10), 21)
