"""The engine's randomness: the secure stream's torch transform equals the reference."""

import numpy as np
import torch

from veil.engine._randomness import SecureRandomness, normals_from_words
from veil.privacy import SecureNoise
from veil.privacy import noise as reference


def test_the_torch_transform_equals_the_numpy_reference() -> None:
    for count in (1, 7, 10_000):
        words = SecureNoise().words(reference.words_for_normals(count)).copy()
        expected = reference.normals_from_words(words, count)
        got = normals_from_words(torch.from_numpy(words.view(np.int64)), count).numpy()
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)


def test_secure_gradient_noise_is_standard_normal_float32_and_unseedable() -> None:
    torch.manual_seed(0)
    first = SecureRandomness().normal(50_000, torch.device("cpu"))
    torch.manual_seed(0)
    second = SecureRandomness().normal(50_000, torch.device("cpu"))
    assert first.dtype == torch.float32 and first.shape == (50_000,)
    assert abs(float(first.std()) - 1) < 0.02 and abs(float(first.mean())) < 0.02
    assert not torch.equal(first, second)  # torch's global seed does not reach it
