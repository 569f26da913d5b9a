"""Pure-torch re-implementation of the z that the Triton backend generates inside its kernels.

This is the *definition* of z for ``engine.backend=triton`` written with torch integer ops, so
it runs anywhere (no Triton) and the kernels can be checked against it element by element.

Definition (the same functions, in the same float32 arithmetic, as ``triton.language.random``,
Triton 3.x):

* key ``k = mix_seed(step_seed, pid)`` (63 bits), split into the Philox key ``(k_lo, k_hi)``;
* element ``e`` of the parameter (row-major index) takes word ``e mod 4`` of Philox counter
  ``c = e div 4``, ``(c_lo, c_hi, 0, 0)``: ``(x0, x1, x2, x3) = Philox4x32-10(counter, key)``
  (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011; Triton's
  ``randint4x``), so one Philox evaluation serves four elements;
* Rademacher: ``z = -1`` if the top bit of the element's word is set, else ``+1``;
* Gaussian: ``u_i = float32(x_i') · 4.6566127342e-10`` with ``x_i'`` the int32 view of ``x_i``
  folded onto ``[0, 2³¹)`` by bitwise not (Triton's ``uint_to_uniform_float``), then Box-Muller
  on the pairs (u0, u1) and (u2, u3): with ``r = sqrt(-2 log max(u, 1e-7))`` and ``t = 2π u'``,
  the four elements are ``r₀ cos t₀, r₀ sin t₀, r₁ cos t₁, r₁ sin t₁`` (Box & Muller 1958;
  Triton's ``randn4x``).

The 32-bit integer stream (and so the Rademacher z and the uniforms) is bit-exact on every device.
The Gaussian z goes through float32 ``log``, ``cos`` and ``sin``, whose last bit depends on the math
library. This reference evaluates them with numpy, as Triton's interpreter does
(``TRITON_INTERPRET=1``), so it matches the interpreted kernels bit for bit (tested); torch's own
float32 ``log``/``cos``/``sin`` differ from numpy's in the last ulp for about a third of the elements, and
compiled CUDA kernels use libdevice: there, agreement is to a few ulps. Regenerating z with the
*same* implementation is always exact, and that is what the engine's perturb → restore → update
cycle relies on.
"""

from __future__ import annotations

import numpy as np
import torch

_MASK32 = 0xFFFFFFFF
# Philox4x32 round multipliers and Weyl key increments (Salmon et al. 2011, Table 2)
ROUND_A, ROUND_B = 0xD2511F53, 0xCD9E8D57
KEY_A, KEY_B = 0x9E3779B9, 0xBB67AE85
ROUNDS = 10
UNIFORM_SCALE = 4.6566127342e-10  # the largest s with (2³¹ - 1)·s < 1 in float32 (Triton's)
MIN_UNIFORM = 1.0e-7              # Box-Muller's log(u) is clamped there (Triton's)
TWO_PI = 6.283185307179586


def _mulhilo(a: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(hi, lo) 32-bit halves of the 64-bit product a·b, with b int64 holding uint32 values.

    int64 cannot hold the product, so b is split into 16-bit halves: every partial product fits.
    """
    b_lo, b_hi = b & 0xFFFF, b >> 16
    low_part, high_part = a * b_lo, a * b_hi  # < 2^48 each
    hi = (high_part + (low_part >> 16)) >> 16
    lo = (a * b) & _MASK32  # the wrapped int64 product is right modulo 2^32
    return hi, lo


def philox4x32(counter: torch.Tensor, key: int) -> tuple[torch.Tensor, ...]:
    """Philox4x32-10 of the counters ``(counter_lo, counter_hi, 0, 0)`` under ``key`` (64 bits):
    four int64 tensors of uint32 values, shaped like ``counter`` (int64, non-negative)."""
    c0 = counter & _MASK32
    c1 = counter >> 32
    c2 = torch.zeros_like(counter)
    c3 = torch.zeros_like(counter)
    k0, k1 = key & _MASK32, (key >> 32) & _MASK32
    for _ in range(ROUNDS):
        hi_b, lo_b = _mulhilo(ROUND_B, c2)
        hi_a, lo_a = _mulhilo(ROUND_A, c0)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0, k1 = (k0 + KEY_A) & _MASK32, (k1 + KEY_B) & _MASK32
    return c0, c1, c2, c3


def uniform(bits: torch.Tensor) -> torch.Tensor:
    """Triton's ``uint_to_uniform_float`` for 32-bit draws: float32 in [0, 1)."""
    signed = torch.where(bits >= 1 << 31, bits - (1 << 32), bits)  # the int32 view
    folded = torch.where(signed < 0, ~signed, signed).to(torch.int32)
    return folded.to(torch.float32) * torch.tensor(UNIFORM_SCALE, dtype=torch.float32)


def philox_z_at(key: int, offsets: torch.Tensor, distribution: str) -> torch.Tensor:
    """The Triton backend's z at the element indices ``offsets`` (int64, non-negative), float32."""
    if distribution not in ("gaussian", "rademacher"):
        raise ValueError(f"distribution={distribution!r}: allowed gaussian, rademacher")
    offsets = offsets.to(torch.int64).cpu()
    lane = (offsets % 4).numpy()
    words = philox4x32(offsets // 4, key)
    if distribution == "rademacher":
        word = np.choose(lane, [w.numpy() for w in words])
        return torch.from_numpy(np.where(word >= 1 << 31, -1.0, 1.0).astype(np.float32))
    # float32 throughout, numpy's log/cos/sin (the interpreter's): see the module docstring
    u = [uniform(w).numpy() for w in words]
    normals = []
    for first, second in ((u[0], u[1]), (u[2], u[3])):
        radius = np.sqrt(np.float32(-2.0) * np.log(np.maximum(np.float32(MIN_UNIFORM), first)))
        angle = np.float32(TWO_PI) * second
        normals += [radius * np.cos(angle), radius * np.sin(angle)]
    return torch.from_numpy(np.choose(lane, normals).astype(np.float32))


def philox_z(key: int, numel: int, distribution: str, device=None) -> torch.Tensor:
    """The Triton backend's z for a parameter of ``numel`` elements (flat, float32)."""
    return philox_z_at(key, torch.arange(numel, dtype=torch.int64), distribution).to(device)
