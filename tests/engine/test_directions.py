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


def test_rademacher_z_is_the_sign_bits_of_philox_on_every_device_path():
    """One definition: element e is bit e mod 32 of word (e mod 128) div 32 of Philox at counter
    e div 128, whichever range is drawn, by numpy's unpacking (CPU) or by shifts (other devices)."""
    from zobench.engine.philox import _signs_by_shifts, philox4x32, philox_z_at, rademacher_z

    key = mix_seed(3, 2)
    whole = Direction(3, "rademacher").sample(2, torch.empty(37, 29)).view(-1)
    assert torch.equal(whole, philox_z_at(key, torch.arange(whole.numel()), "rademacher"))
    assert torch.equal(rademacher_z(key, 333, 999), whole[333:999])  # random access: any range alone
    words = torch.stack(philox4x32(torch.arange(9), key), dim=1).view(-1)
    assert torch.equal(_signs_by_shifts(words), rademacher_z(key, 0, 9 * 128))
    # known answer (Random123's test vector: Philox4x32-10 of counter 0 under key 0 is
    # 0x6627e8d5, ...): the low byte 0xd5 = 0b11010101, bit 0 first, set bits give -1
    assert rademacher_z(0, 0, 8).tolist() == [-1.0, 1.0, -1.0, 1.0, -1.0, 1.0, -1.0, -1.0]
    # words 1-3 of that counter: elements 32-127 (0xe169c58d, 0xbc57ac4c, 0x9b00dbd8)
    expected = [
        -1.0 if (word >> bit) & 1 else 1.0 for word in (0xE169C58D, 0xBC57AC4C, 0x9B00DBD8) for bit in range(32)
    ]
    assert rademacher_z(0, 32, 128).tolist() == expected


def test_unknown_distribution_is_refused():
    with pytest.raises(ValueError, match="distribution='uniform'"):
        Direction(0, "uniform")


def test_mix_seed_separates_tuples():
    seeds = {mix_seed(a, b) for a in range(50) for b in range(50)}
    assert len(seeds) == 2500
    assert mix_seed(1, 2) != mix_seed(2, 1)
    assert all(0 <= s < 2**63 for s in seeds)


# --- z drawn in chunks (no parameter-sized z on CPU) ---------------------------------------------


@pytest.fixture
def small_chunks(monkeypatch):
    from zobench.engine import directions

    monkeypatch.setattr(directions, "Z_CHUNK", 64)
    return 64


@pytest.mark.parametrize("distribution", ["gaussian", "rademacher"])
@pytest.mark.parametrize("numel", [127, 128, 129, 143, 144, 145, 200, 335, 336, 1000, 1001])
def test_chunked_z_is_the_whole_z(small_chunks, distribution, numel):
    """Chunks of torch's CPU generator concatenate to the one-draw z at every tail length; a
    torch release that broke this would silently change every CPU run's z."""
    direction = Direction(77, distribution)
    like = torch.empty(numel)
    pieces = list(direction.chunks(3, like))
    assert pieces[0][0] == 0 and pieces[-1][1] == numel and (len(pieces) > 1 or numel < 2 * small_chunks)
    assert all(a[1] == b[0] for a, b in zip(pieces, pieces[1:]))
    assert torch.equal(torch.cat([z for _, _, z in pieces]), direction.sample(3, like))


def test_chunked_z_at_the_real_chunk_size():
    like = torch.empty(2 * (1 << 20) + 5)  # two chunks, the second absorbing the 5-element tail
    direction = Direction(5)
    pieces = list(direction.chunks(0, like))
    assert len(pieces) == 2 and torch.equal(torch.cat([z for _, _, z in pieces]), direction.sample(0, like))


def test_a_transformed_direction_is_drawn_in_chunks_too(small_chunks):
    """A subclass that overrides ``transform`` (HiZOO's z/√Σ, Sparse-MeZO's mask) is transformed
    piece by piece, equal to its whole ``sample``; a non-contiguous tensor gets one whole piece."""

    class Scaled(Direction):
        def transform(self, pid, like, start, stop, z):
            return z.mul_(like.reshape(-1)[start:stop])

    like = torch.linspace(-1, 1, 1000)
    direction = Scaled(4)
    pieces = list(direction.chunks(2, like))
    assert len(pieces) > 1 and direction.chunkable(like)
    assert torch.equal(torch.cat([z for _, _, z in pieces]), direction.sample(2, like))
    assert torch.equal(direction.sample(2, like), Direction(4).sample(2, like) * like)
    transposed = like.view(20, 50).t()
    assert not direction.chunkable(transposed)
    [(start, stop, z)] = direction.chunks(2, transposed)
    assert (start, stop) == (0, 1000) and torch.equal(z, direction.sample(2, transposed).reshape(-1))


def test_foreach_hands_out_pieces_of_a_non_contiguous_parameter(small_chunks):
    """``Engine.foreach`` writes through to a transposed parameter (worked on as a contiguous copy)."""
    from zobench.engine import InPlaceEngine

    p = torch.zeros(50, 20).t()
    InPlaceEngine().foreach([(0, p)], Direction(3), lambda pid, q, piece: piece.weights.add_(piece.z))
    assert torch.equal(p, Direction(3).sample(0, p))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_engines_sweep_a_large_parameter_without_a_whole_z(small_chunks, dtype, monkeypatch):
    """In-place perturb, restore+update and the virtual θ + εz draw z in chunks, bit-identical
    to the whole-z formula, and never ask for a parameter-sized z."""
    from zobench.engine import InPlaceEngine
    from zobench.engine.torch_backend import perturbed_value

    theta = (torch.randn(40, 17, generator=torch.Generator().manual_seed(0)) * 0.02).to(dtype)
    direction = Direction(9)
    z = direction.sample(0, theta).to(dtype)
    expected_perturbed = torch.add(theta, z, alpha=1e-3)
    expected_step = expected_perturbed.clone().add_(z, alpha=-1e-3).mul_(1 - 1e-4).add_(z, alpha=-0.5)

    whole = Direction.sample
    monkeypatch.setattr(Direction, "sample", lambda self, pid, like: pytest.fail("a whole z was drawn"))
    assert torch.equal(perturbed_value(theta, 0, direction, 1e-3), expected_perturbed)
    engine, p = InPlaceEngine(), theta.clone()
    engine.perturb([(0, p)], direction, 1e-3)
    assert torch.equal(p, expected_perturbed)
    engine.restore_and_update([(0, p)], direction, coeff=-0.5, decay=1e-4)
    monkeypatch.setattr(Direction, "sample", whole)
    assert torch.equal(p, expected_step)
