"""The engine on a CUDA device computes what it computes on the CPU.

Skipped where torch sees no GPU (CI has none); run on a machine with one. Steps are
compared with noise so small it vanishes in float32, from the same initial weights, so
a difference is the device path's (transfers, kernels, generators), not randomness.
"""

import numpy as np
import pytest
import torch

from veil import ValidationError, nn
from veil.engine import DPTrainer, build_module
from veil.engine._layerwise import backprops, clip_layerwise
from veil.engine._objective import Objective
from veil.engine._randomness import normals_from_words as torch_transform
from veil.privacy.noise import normals_from_words

from .conftest import make_spec
from .test_layerwise import SPECS, _batch, _masks

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
CUDA = torch.device("cuda")
TINY_SIGMA = 1e-12


def _image_spec(**kwargs: object) -> nn.ModelSpec:
    kwargs.setdefault("optimizer", nn.Adam(0.01))
    return make_spec(
        [
            nn.Rescaling(1 / 255, input_shape=(None, 3, 12, 12)),
            nn.Convolution(8, 3, activation="relu"),
            nn.MaxPool(2),
            nn.Convolution(8, 3, activation="relu"),
            nn.Flatten(),
            nn.Dense(3),
            nn.Softmax(),
        ],
        (None, 3, 12, 12),
        loss=nn.CrossEntropy(),
        **kwargs,
    )


def _images(n: int = 96) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(n, 3, 12, 12), dtype=np.uint8)
    y = rng.integers(0, 3, size=n)
    y[5] = 7  # a label out of range: a zero gradient on either device
    return x, y


def _pair(spec: nn.ModelSpec) -> tuple[DPTrainer, DPTrainer]:
    cpu, gpu = DPTrainer(spec, seed=1), DPTrainer(spec, seed=1, device="cuda")
    gpu.set_weights(cpu.get_weights())
    return cpu, gpu


def _assert_same_weights(a: DPTrainer, b: DPTrainer) -> None:
    for name, value in a.get_weights().items():
        np.testing.assert_allclose(b.get_weights()[name], value, rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize("name", sorted(SPECS))
@pytest.mark.parametrize("clip", [1e-3, 1e3])
def test_layerwise_clipping_on_cuda_equals_cpu(name: str, clip: float) -> None:
    spec = SPECS[name]()
    module = build_module(spec, generator=torch.Generator().manual_seed(0))
    objective = Objective.from_spec(spec)
    x, y, valid = _batch(spec, objective, 9)
    masks = _masks(spec, 9)
    expected, expected_norms = clip_layerwise(
        backprops(module, objective, x, y, masks), clip, valid
    )
    torch.backends.cudnn.allow_tf32 = False  # as a DPTrainer on CUDA sets it
    gpu_terms = backprops(
        module.to(CUDA), objective, x.to(CUDA), y.to(CUDA), [m.to(CUDA) for m in masks]
    )
    sums, norms = clip_layerwise(gpu_terms, clip, valid.to(CUDA))
    for key, value in expected.items():
        torch.testing.assert_close(sums[key].cpu(), value, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(norms.cpu()[valid], expected_norms[valid], rtol=1e-4, atol=1e-6)


def test_row_level_steps_on_cuda_equal_cpu() -> None:
    torch.backends.cudnn.allow_tf32 = True  # torch's default, which a trainer turns off
    cpu, gpu = _pair(_image_spec())
    assert not torch.backends.cudnn.allow_tf32  # a clip is only as exact as its norm
    x, y = _images()
    for start in (0, 32, 64):
        for trainer in (cpu, gpu):
            trainer.step(x[start : start + 32], y[start : start + 32], noise_multiplier=TINY_SIGMA)
    _assert_same_weights(cpu, gpu)
    rows = np.arange(len(x))
    (loss_cpu, acc_cpu, _), (loss_gpu, acc_gpu, _) = (
        t.evaluate(x, y, rows=rows) for t in (cpu, gpu)
    )
    assert loss_gpu == pytest.approx(loss_cpu, rel=1e-4)
    assert acc_gpu == pytest.approx(acc_cpu)
    np.testing.assert_allclose(gpu.predict(x), cpu.predict(x), rtol=1e-4, atol=1e-6)


def test_subject_level_steps_on_cuda_equal_cpu() -> None:
    cpu, gpu = _pair(_image_spec())
    x, y = _images(40)
    subjects = np.arange(40) // 3  # people of three rows, clipped together
    for trainer in (cpu, gpu):
        result = trainer.step(x, y, noise_multiplier=TINY_SIGMA, subjects=subjects)
        assert np.isnan(result.metrics.losses[5])  # the row that did not fit, on both
    _assert_same_weights(cpu, gpu)


def test_secure_noise_on_cuda_is_the_cpu_transform() -> None:
    trainer = DPTrainer(_image_spec(), device="cuda")
    assert trainer.secure
    noise = trainer._random.normal(400_000, CUDA)
    assert noise.device.type == "cuda" and noise.dtype == torch.float32
    assert abs(noise.mean().item()) < 0.01 and abs(noise.std().item() - 1) < 0.01
    words = np.random.default_rng(0).integers(0, 2**63, size=4_000, dtype=np.int64)
    on_gpu = torch_transform(torch.from_numpy(words).to(CUDA), 1_000).cpu().numpy()
    np.testing.assert_allclose(on_gpu, normals_from_words(words.view(np.uint64), 1_000), rtol=1e-12)


@pytest.mark.parametrize("by_subject", [False, True])
def test_a_fit_on_cuda_trains_on_images(by_subject: bool) -> None:
    x, y = _images(192)
    trainer = DPTrainer(_image_spec(noise_multiplier=0.5), device="cuda")
    before = trainer.get_weights()
    extra = {"subjects": np.arange(192) // 2, "rows_per_subject": 2} if by_subject else {}
    val = np.arange(160, 192)
    result = trainer.fit(
        x, y, train_rows=np.arange(160), val_rows=val, epochs=2, batch_size=32, **extra
    )
    assert result.steps_done == result.steps_total > 0
    assert result.history[-1].validation is not None and result.history[-1].validation.n == len(val)
    after = trainer.get_weights()
    assert all(np.isfinite(v).all() for v in after.values())
    assert any(not np.array_equal(after[k], before[k]) for k in before)
    preds = trainer.predict(x[:10])
    assert preds.dtype == np.float32 and preds.shape == (10, 3)


def test_checkpoints_move_between_devices() -> None:
    spec = _image_spec()
    x, y = _images(32)
    gpu = DPTrainer(spec, device="cuda")
    gpu.step(x, y)
    tensors, meta = gpu.checkpoint()
    assert all(t.device.type == "cpu" for t in tensors.values())
    cpu = DPTrainer(spec)
    cpu.load_checkpoint(tensors, meta)
    _assert_same_weights(gpu, cpu)
    back = DPTrainer(spec, device="cuda")  # a secure trainer: fresh dropout, same weights
    back.load_checkpoint(*cpu.checkpoint())
    back.step(x, y)  # the Adam state moved to the GPU with the weights
    seeded = DPTrainer(spec, seed=3, device="cuda")
    with pytest.raises(ValidationError, match="another kind of device"):
        seeded.load_checkpoint(*DPTrainer(spec, seed=3).checkpoint())
