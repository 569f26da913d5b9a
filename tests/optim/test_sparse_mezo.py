"""Method-specific checks of Sparse-MeZO's threshold (the shared contract is in test_conformance.py)."""

import math

import pytest
import torch


@pytest.mark.parametrize("chunk", [None, 64, 1000])
def test_sparse_mezo_threshold_is_the_exact_kth_smallest_magnitude(chunk):
    """The radix selection (no parameter-sized copy) equals kthvalue on |θ| bit for bit: ties,
    ±0, rounded values, half precision, tiny and huge magnitudes, every sparsity."""
    from zobench.optim.sparse_mezo import magnitude_threshold

    gen = torch.Generator().manual_seed(0)
    cases = [
        torch.randn(1000, 37, generator=gen),
        torch.randn(50, 50, generator=gen).round(),
        torch.zeros(10, 10),
        torch.tensor([[-0.0, 0.0], [1.0, -1.0]]),
        torch.randn(300, 7, generator=gen).to(torch.bfloat16),
        torch.randn(64, 64, generator=gen).half() * 1e-6,
        torch.randn(3, 3, generator=gen) * 1e30,
    ]
    for p in cases:
        flat = p.abs().flatten().float()
        for sparsity in (0.0, 0.25, 0.5, 0.75, 0.9, 0.999):
            k = max(1, math.ceil((1 - sparsity) * flat.numel()))
            assert magnitude_threshold(p, sparsity, chunk) == float(flat.kthvalue(k).values)
