import pytest
import torch

from zobench.engine import Direction, mix_seed


def test_z_is_a_pure_function_of_seed_pid_and_shape():
    like = torch.empty(7, 5)
    a = Direction(123).sample(4, like)
    # regenerate after drawing other directions: the same numbers
    Direction(999).sample(4, like)
    Direction(123).sample(3, like)
    assert torch.equal(a, Direction(123).sample(4, like))
    assert a.dtype == torch.float32 and a.shape == like.shape


def test_z_does_not_touch_or_depend_on_the_global_rng():
    like = torch.empty(100)
    torch.manual_seed(0)
    first = torch.rand(3)
    torch.manual_seed(0)
    z1 = Direction(5).sample(0, like)
    after = torch.rand(3)
    assert torch.equal(first, after)
    torch.manual_seed(12345)
    assert torch.equal(z1, Direction(5).sample(0, like))


def test_different_parameters_and_steps_get_unrelated_directions():
    like = torch.empty(10_000)
    z = Direction(1).sample(0, like)
    for other in (Direction(1).sample(1, like), Direction(2).sample(0, like)):
        corr = torch.corrcoef(torch.stack([z, other]))[0, 1]
        assert abs(corr) < 0.05
    assert abs(z.mean()) < 0.05 and abs(z.std() - 1) < 0.05


def test_rademacher_is_plus_minus_one_balanced():
    z = Direction(3, "rademacher").sample(2, torch.empty(10_000))
    assert set(z.unique().tolist()) == {-1.0, 1.0}
    assert abs(z.mean()) < 0.05


def test_unknown_distribution_is_refused():
    with pytest.raises(ValueError, match="distribution='uniform'"):
        Direction(0, "uniform")


def test_mix_seed_separates_tuples():
    seeds = {mix_seed(a, b) for a in range(50) for b in range(50)}
    assert len(seeds) == 2500
    assert mix_seed(1, 2) != mix_seed(2, 1)
    assert all(0 <= s < 2**63 for s in seeds)
