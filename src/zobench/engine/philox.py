"""Pure-torch re-implementation of the z that the Triton backend generates inside its kernels.

This is the *definition* of z for ``engine.backend=triton`` (and of the Rademacher z for every
backend) written with torch / numpy integer ops, so it runs anywhere (no Triton) and the kernels
can be checked against it element by element.

Definition (the same functions, in the same float32 arithmetic, as ``triton.language.random``,
Triton 3.x):

* key ``k = mix_seed(step_seed, pid)`` (63 bits), split into the Philox key ``(k_lo, k_hi)``;
* ``(x0, x1, x2, x3) = Philox4x32-10((c_lo, c_hi, 0, 0), key)`` for a counter ``c`` (Salmon et
  al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011; Triton's ``randint4x``);
* Rademacher (every backend, torch's too: ``rademacher_z``): one Philox evaluation gives 128 signs,
  its 128 bits. Element ``e`` (row-major index) takes bit ``b = e mod 32`` of word
  ``w = (e mod 128) div 32`` of counter ``e div 128``: ``z = -1`` if that bit is set, else ``+1``.
  So z costs one Philox call per 128 elements, and since a counter generator is random access,
  any range of elements is drawn alone (chunk-invariant by construction);
* Gaussian (Triton backend; torch's is ``torch.randn``): element ``e`` takes word ``e mod 4`` of
  counter ``e div 4`` (one Philox evaluation serves four elements):
  ``u_i = float32(x_i') · 4.6566127342e-10`` with ``x_i'`` the int32 view of ``x_i`` folded onto
  ``[0, 2³¹)`` by bitwise not (Triton's ``uint_to_uniform_float``), then Box-Muller on the pairs
  (u0, u1) and (u2, u3): with ``r = sqrt(-2 log max(u, 1e-7))`` and ``t = 2π u'``, the four
  elements are ``r₀ cos t₀, r₀ sin t₀, r₁ cos t₁, r₁ sin t₁`` (Box & Muller 1958; Triton's
  ``randn4x``).

The 32-bit integer stream (and so the Rademacher z and the uniforms) is bit-exact on every device:
the Rademacher z is one definition for the torch and Triton backends, on CPU and CUDA.
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
MIN_UNIFORM = 1.0e-7  # Box-Muller's log(u) is clamped there (Triton's)
TWO_PI = 6.283185307179586


def _mulhilo(a, b):
    """(hi, lo) 32-bit halves of the 64-bit product a·b of a uint32 constant and uint32 values.

    int64 (torch) and uint64 (numpy) multiplication wrap modulo 2⁶⁴, so the wrapped product
    has the unsigned product's bits and both halves are read off it (the mask drops the sign
    extension of torch's arithmetic shift).
    """
    product = a * b
    return (product >> 32) & _MASK32, product & _MASK32


def philox4x32(counter, key: int) -> tuple:
    """Philox4x32-10 of the counters ``(counter_lo, counter_hi, 0, 0)`` under ``key`` (64 bits):
    four arrays of uint32 values shaped like ``counter``: a torch int64 tensor (any device;
    non-negative) or a numpy uint64 array (CPU; the same bits, about half the time per call on
    the small arrays of a chunk, see ``rademacher_z``)."""
    const = np.uint64 if isinstance(counter, np.ndarray) else int  # keep numpy in uint64
    mask, k0, k1 = const(_MASK32), key & _MASK32, (key >> 32) & _MASK32
    c0, c1 = counter & mask, counter >> const(32)
    c2 = c3 = counter * const(0)
    for _ in range(ROUNDS):
        hi_b, lo_b = _mulhilo(const(ROUND_B), c2)
        hi_a, lo_a = _mulhilo(const(ROUND_A), c0)
        c0, c1, c2, c3 = hi_b ^ c1 ^ const(k0), lo_b, hi_a ^ c3 ^ const(k1), lo_a
        k0, k1 = (k0 + KEY_A) & _MASK32, (k1 + KEY_B) & _MASK32
    return c0, c1, c2, c3


def uniform(bits: torch.Tensor) -> torch.Tensor:
    """Triton's ``uint_to_uniform_float`` for 32-bit draws: float32 in [0, 1)."""
    signed = torch.where(bits >= 1 << 31, bits - (1 << 32), bits)  # the int32 view
    folded = torch.where(signed < 0, ~signed, signed).to(torch.int32)
    return folded.to(torch.float32) * torch.tensor(UNIFORM_SCALE, dtype=torch.float32)


SIGNS_PER_CALL = 128  # Rademacher elements per Philox4x32 evaluation: its 4 words' 128 bits
_ONE_BITS, _SIGN_BIT = 0x3F800000, -(1 << 31)  # float32 1.0; the sign bit, as int32


def rademacher_z(key: int, start: int, stop: int, device=None) -> torch.Tensor:
    """The Rademacher z of elements [start, stop) of a parameter (flat, float32, on ``device``),
    for every backend: element e is the sign of bit e mod 32 of word (e mod 128) div 32 of
    Philox4x32-10 at counter e div 128 (see the module docstring). The same bits on any device:
    on CPU numpy unpacks the words' bits (``unpackbits``, little-endian bit order); elsewhere
    each element's bit is shifted into the sign bit of float32 1.0 (``_signs_by_shifts``)."""
    device = torch.device("cpu") if device is None else torch.device(device)
    if stop <= start:
        return torch.empty(0, dtype=torch.float32, device=device)
    first = start // SIGNS_PER_CALL
    last = (stop - 1) // SIGNS_PER_CALL + 1
    if device.type == "cpu":  # bit b of word w of counter c is element 32(4c + w) + b
        words = np.stack(philox4x32(np.arange(first, last, dtype=np.uint64), key), axis=1)
        bits = np.unpackbits(words.astype("<u4").view(np.uint8), bitorder="little")
        z = torch.from_numpy(bits).to(torch.float32).mul_(-2.0).add_(1.0)
    else:
        counters = torch.arange(first, last, dtype=torch.int64, device=device)
        z = _signs_by_shifts(torch.stack(philox4x32(counters, key), dim=1).view(-1))
    offset = first * SIGNS_PER_CALL
    return z[start - offset : stop - offset]


def _signs_by_shifts(words: torch.Tensor) -> torch.Tensor:
    """±1 (float32) for the 32 bits of each word (int64 holding uint32), bit b of word i at
    32i + b: bit b shifted into bit 31, masked, OR float32 1.0's bits, viewed as float32."""
    words = (words - ((words >> 31) << 32)).to(torch.int32).view(-1, 1)  # the int32 with those bits
    shifts = 31 - torch.arange(32, dtype=torch.int32, device=words.device)
    out = torch.bitwise_left_shift(words, shifts)
    return out.bitwise_and_(_SIGN_BIT).bitwise_or_(_ONE_BITS).view(torch.float32).view(-1)


def philox_z_at(key: int, offsets: torch.Tensor, distribution: str) -> torch.Tensor:
    """The Triton backend's z at the element indices ``offsets`` (int64, non-negative), float32."""
    if distribution not in ("gaussian", "rademacher"):
        raise ValueError(f"distribution={distribution!r}: allowed gaussian, rademacher")
    offsets = offsets.to(torch.int64).cpu()
    if distribution == "rademacher":  # random access: each element's own counter, word and bit
        words = torch.stack(philox4x32(offsets // SIGNS_PER_CALL, key), dim=-1)
        lane = offsets % SIGNS_PER_CALL
        word = words.gather(-1, (lane // 32).unsqueeze(-1)).squeeze(-1)
        return 1.0 - 2.0 * ((word >> (lane % 32)) & 1).to(torch.float32)
    word_of = (offsets % 4).numpy()  # which of its counter's 4 words an element takes
    # float32 throughout, numpy's log/cos/sin (the interpreter's): see the module docstring
    u = [uniform(w).numpy() for w in philox4x32(offsets // 4, key)]
    normals = []
    for first, second in ((u[0], u[1]), (u[2], u[3])):
        radius = np.sqrt(np.float32(-2.0) * np.log(np.maximum(np.float32(MIN_UNIFORM), first)))
        angle = np.float32(TWO_PI) * second
        normals += [radius * np.cos(angle), radius * np.sin(angle)]
    return torch.from_numpy(np.choose(word_of, normals).astype(np.float32))


def philox_z(key: int, numel: int, distribution: str, device=None) -> torch.Tensor:
    """The Triton backend's z for a parameter of ``numel`` elements (flat, float32)."""
    if distribution == "rademacher":
        return rademacher_z(key, 0, numel, device)
    return philox_z_at(key, torch.arange(numel, dtype=torch.int64), distribution).to(device)
