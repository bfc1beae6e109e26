"""Noise for every DP mechanism Veil runs: a secure source, shaped against float attacks.

- **Source.** Bits come from AES-256 in counter mode (OpenSSL, through `cryptography`),
  keyed with 32 bytes of the operating system's CSPRNG when a `SecureNoise` is made.
  The key exists only in that object's memory: no one can seed it, nothing stores it,
  and the node makes a fresh one for each job and each release.
- **Gaussian.** A standard normal is the sum of four Box-Muller normals (float64 from
  53-bit uniforms) divided by two. A single floating-point Gaussian sampler reaches a
  sparse, value-dependent set of floats, which the attacks of Mironov (2012) and Jin et
  al. (2022) read back; summing 2n samples fills those gaps (Holohan and Braghin 2021,
  "Secure Random Sampling in Differential Privacy"), as Opacus' secure mode does.
- **Snapping.** A released scalar or small array is rounded to a power-of-two grid far
  below its noise (`snap`), so its lowest bits carry nothing of the private value.
- **Constant work.** Every draw costs the same operations whatever the values: no
  rejection loops, so the time to noise a release does not depend on the noise drawn.

Sampling for `fit` (each training row joins a step with probability q) uses the same
source (`bernoulli`), so a data scientist cannot predict which rows a step used either.
"""

from __future__ import annotations

import math
import os

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from veil._exceptions import ValidationError

__all__ = [
    "MIN_STD",
    "SNAP_BITS",
    "SUMMANDS",
    "SecureNoise",
    "normals_from_words",
    "snap",
    "words_for_normals",
]

# Box-Muller normals summed per output (Holohan and Braghin's 2n, with n = 2).
SUMMANDS = 4
_U53 = np.uint64((1 << 53) - 1)
# Released values are rounded to a grid 2^SNAP_BITS times finer than their noise std.
SNAP_BITS = 20
# The least noise std a release takes. Far under any std public bounds give (a bound
# >= 1e-6 over at most 2^53 rows, times sigma >= 0.3), and far over float64's normal
# range, so neither the noise nor the snapping grid is ever flushed to zero.
MIN_STD = 1e-100


def words_for_normals(count: int) -> int:
    """How many keystream words `count` standard normals take (two per Box-Muller pair)."""
    return 2 * ((SUMMANDS * count + 1) // 2)


def normals_from_words(words: np.ndarray, count: int) -> np.ndarray:
    """The transform: `words_for_normals(count)` uint64 words to `count` float64 N(0, 1)
    samples, each four Box-Muller normals summed and divided by two. (The engine runs the
    same transform in torch, `veil.engine._randomness`; a test holds the two equal.)"""
    u = ((words & _U53) + 1.0) * 2.0**-53
    pairs = u.shape[0] // 2
    radius = np.sqrt(-2.0 * np.log(u[:pairs]))
    angle = (2.0 * np.pi) * u[pairs:]
    normals = np.concatenate([radius * np.cos(angle), radius * np.sin(angle)])
    return normals[: SUMMANDS * count].reshape(SUMMANDS, count).sum(axis=0) / math.sqrt(SUMMANDS)


class SecureNoise:
    """A cryptographically secure source of uniforms, coin flips and Gaussian noise.

    Not thread-safe: give each thread (each job, each release) its own instance.
    """

    def __init__(self) -> None:
        cipher = Cipher(algorithms.AES(os.urandom(32)), modes.CTR(os.urandom(16)))
        self._stream = cipher.encryptor()
        self._zeros = b""
        self._out = bytearray()

    def _bytes(self, count: int) -> memoryview:
        """The next `count` keystream bytes, in a buffer reused by the next draw."""
        if len(self._zeros) < count:
            self._zeros = bytes(count)
            self._out = bytearray(count + 15)  # CTR may hold back up to a block
        written = self._stream.update_into(memoryview(self._zeros)[:count], self._out)
        return memoryview(self._out)[:written]

    def words(self, count: int) -> np.ndarray:
        """`count` uniform uint64 words: a view that the next draw overwrites."""
        return np.frombuffer(self._bytes(8 * count), dtype=np.uint64)

    def uniform(self, count: int) -> np.ndarray:
        """`count` float64 uniforms in (0, 1], each a multiple of 2^-53."""
        return ((self.words(count) & _U53) + 1.0) * 2.0**-53

    def standard_normal(self, shape: int | tuple[int, ...]) -> np.ndarray:
        """Float64 N(0, 1) samples: four Box-Muller normals summed, divided by two."""
        count = math.prod(shape) if isinstance(shape, tuple) else int(shape)
        return normals_from_words(self.words(words_for_normals(count)), count).reshape(shape)

    def gaussian(self, shape: int | tuple[int, ...], std: float) -> np.ndarray:
        """Float64 N(0, std^2) noise of `shape`."""
        if not (isinstance(std, int | float) and math.isfinite(std) and std >= 0):
            raise ValidationError(f"Expected a finite noise std >= 0. Received: std={std!r}")
        return self.standard_normal(shape) * float(std)

    def bernoulli(self, count: int, p: float) -> np.ndarray:
        """`count` independent coins, each True with probability p (rounded down to a
        multiple of 2^-32: a rate never above the one the accounting assumed)."""
        if not (isinstance(p, int | float) and 0.0 <= p <= 1.0):
            raise ValidationError(f"Expected a probability 0 <= p <= 1. Received: p={p!r}")
        if p >= 1.0:
            return np.ones(count, dtype=bool)
        threshold = np.uint32(math.floor(p * 2.0**32))
        return np.frombuffer(self._bytes(4 * count), dtype=np.uint32) < threshold


def snap(values: np.ndarray, std: float) -> np.ndarray:
    """Round noised `values` to the power-of-two grid just under std / 2^SNAP_BITS."""
    array = np.asarray(values, dtype=np.float64)
    if not (math.isfinite(std) and std > 0):
        return array
    grid = math.ldexp(1.0, math.floor(math.log2(std)) - SNAP_BITS)
    return array if grid == 0.0 else np.round(array / grid) * grid
