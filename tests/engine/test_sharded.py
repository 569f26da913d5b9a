"""The z of a shard (``engine/sharded.py``): any range of global elements draws exactly the slice
of the whole parameter's z, for every distribution and chunk size (the basis of a sharded run
equalling one process bit for bit)."""

from __future__ import annotations

import pytest
import torch

from zobench.engine import Direction, directions
from zobench.engine.sharded import z_range
from zobench.optim.hizoo import HessianScaledDirection


def joined(direction, pid, shape, start, stop, size=None):
    pieces = list(z_range(direction, pid, shape, "cpu", start, stop, size))
    assert [s for s, _, _ in pieces][0] == start and pieces[-1][1] == stop
    assert all(a[1] == b[0] for a, b in zip(pieces, pieces[1:]))  # contiguous, in order
    return torch.cat([z for _, _, z in pieces])


@pytest.mark.parametrize("distribution", ["gaussian", "rademacher"])
@pytest.mark.parametrize("shape", [(7,), (37, 8), (1000,), (333, 3)])
@pytest.mark.parametrize("size", [32, 64, None])
def test_any_range_is_the_slice_of_the_whole_z(distribution, shape, size, monkeypatch):
    monkeypatch.setattr(directions, "Z_CHUNK", 32)  # the whole parameter's z is drawn in chunks too
    direction = Direction(1234, distribution)
    like = torch.zeros(shape)
    whole = torch.cat([z for _, _, z in direction.chunks(3, like)])
    assert torch.equal(whole, direction.sample(3, like).reshape(-1))
    n = like.numel()
    for start, stop in [(0, n), (0, 1), (5, 17), (16, 48), (n - 3, n), (n // 2, n), (n // 3, 2 * n // 3 + 1)]:
        if 0 <= start < stop <= n:
            assert torch.equal(joined(direction, 3, shape, start, stop, size), whole[start:stop]), (start, stop)


def test_a_range_is_empty_when_it_holds_no_element():
    assert list(z_range(Direction(1), 0, (10, 4), "cpu", 8, 8)) == []


def test_a_whole_tensor_direction_without_fixed_blocks_is_refused_in_one_line():
    """A direction that draws a parameter's z at once and cannot give it by fixed blocks (the
    low-rank ones can: ``whole_blocks``) cannot be sliced to a shard."""
    from zobench.errors import ConfigError

    class Whole(Direction):
        def sample(self, pid, like):
            return torch.ones_like(like)

    with pytest.raises(
        ConfigError, match="dist.mode=sharded: Whole draws a whole parameter's z at once and has no whole_blocks"
    ):
        list(z_range(Whole(1), 0, (4, 4), "cpu", 0, 16))


def test_plain_z_of_a_transformed_direction_is_the_untransformed_one():
    """``z_range`` gives the plain z; ``local_pieces`` applies ``transform`` on the local shard."""
    plain = Direction(7)
    scaled = HessianScaledDirection(7, sigma=None)
    assert torch.equal(joined(scaled, 2, (40,), 3, 30), joined(plain, 2, (40,), 3, 30))
