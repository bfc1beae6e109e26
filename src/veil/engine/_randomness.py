"""Where DP-SGD's randomness comes from: gradient noise and Poisson sampling.

- `SecureRandomness` (the default, and the only kind the node uses): both come from
  `veil.privacy.SecureNoise`, a keyed AES-CTR stream made fresh for each trainer. It
  has no state to save: a checkpoint carries none, and a resumed job draws new keys.
- `SeededRandomness`: torch's and numpy's generators from one seed, so a local
  experiment repeats exactly. They are not cryptographically secure; their state is
  saved in the checkpoint so that a resumed run repeats too.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import numpy as np
import torch

from veil.engine._checkpoint import numpy_state, restore_numpy_state
from veil.privacy import SecureNoise
from veil.privacy.noise import SUMMANDS, words_for_normals

__all__ = ["Randomness", "SecureRandomness", "SeededRandomness"]


def normals_from_words(words: torch.Tensor, count: int) -> torch.Tensor:
    """`veil.privacy.noise.normals_from_words` in torch, which is several times faster on
    a gradient's worth of noise: the same uniforms, Box-Muller pairs and sum of four.
    Each pass after the first works in place (and 2 pi folds into the uniforms' power-of-
    two scale, which rounds alike): at 98,378 parameters the transform took 6.6 ms
    with a new tensor per operation, 3.4 ms so (interleaved in one process)."""
    u = (words & ((1 << 53) - 1)).double().add_(1.0)
    pairs = u.shape[0] // 2
    radius = u[:pairs].mul_(2.0**-53).log_().mul_(-2.0).sqrt_()
    angle = u[pairs:].mul_(2.0 * math.pi * 2.0**-53)
    normals = torch.empty(2 * pairs, dtype=torch.float64, device=words.device)
    torch.cos(angle, out=normals[:pairs]).mul_(radius)
    torch.sin(angle, out=normals[pairs:]).mul_(radius)
    summed = normals[: SUMMANDS * count].view(SUMMANDS, count).sum(dim=0)
    return summed.div_(math.sqrt(SUMMANDS))


class Randomness(Protocol):
    secure: bool

    def normal(self, count: int, device: torch.device) -> torch.Tensor:
        """`count` float32 N(0, 1) samples on `device`."""
        ...

    def poisson(self, rows: np.ndarray, q: float) -> np.ndarray:
        """Each of `rows` independently with probability q, in their order."""
        ...

    def uniform(self, count: int) -> np.ndarray:
        """`count` float64 uniforms in [0, 1)."""
        ...

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]: ...

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None: ...


class SecureRandomness:
    secure = True

    def __init__(self) -> None:
        self._source = SecureNoise()

    def normal(self, count: int, device: torch.device) -> torch.Tensor:
        """The keystream is made on the CPU (AES); the transform runs where the noise is
        needed, so a GPU gets 8 bytes a word and does the float64 work itself."""
        words = torch.from_numpy(self._source.words(words_for_normals(count)).view(np.int64))
        return normals_from_words(words.to(device), count).to(torch.float32)

    def poisson(self, rows: np.ndarray, q: float) -> np.ndarray:
        return rows[self._source.bernoulli(len(rows), q)]

    def uniform(self, count: int) -> np.ndarray:
        return self._source.uniform(count)

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        return {}, {}

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        """Nothing to restore: a secure stream is never saved, so it is never replayed."""


class SeededRandomness:
    secure = False

    def __init__(self, *, noise_seed: int, sampling_seed: int, device: torch.device) -> None:
        self._noise = torch.Generator(device=device).manual_seed(noise_seed)
        self._sampler = np.random.Generator(np.random.PCG64(sampling_seed))

    def normal(self, count: int, device: torch.device) -> torch.Tensor:
        return torch.randn(count, generator=self._noise, device=device)

    def poisson(self, rows: np.ndarray, q: float) -> np.ndarray:
        """A Binomial(n, q) size, then a uniform subset of that size: the same
        distribution as n coins, in O(batch) random numbers."""
        size = int(self._sampler.binomial(len(rows), q))
        return np.sort(rows[self._sampler.choice(len(rows), size=size, replace=False)])

    def uniform(self, count: int) -> np.ndarray:
        return self._sampler.random(count)

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        return {"rng.noise": self._noise.get_state()}, {"sampler": numpy_state(self._sampler)}

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        if "rng.noise" in tensors:
            self._noise.set_state(tensors["rng.noise"])
        if "sampler" in meta:
            restore_numpy_state(self._sampler, meta["sampler"])
