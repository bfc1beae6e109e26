"""Per-example gradients: torch.func (functional_call + vmap(grad)) against Opacus.

Times one per-example gradient computation (forward, per-example backward, all
per-example gradients materialised) for two models and a few batch sizes, prints a
table and writes ``benchmarks/results/per_sample_grads.json``. The engine uses the
winner (see ``veil.engine``).

    python benchmarks/per_sample_grads.py [--repeats 5] [--device cpu]
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from _sizes import machine, size_flags
from opacus import GradSampleModule
from torch import nn
from torch.func import functional_call, grad, vmap

RESULTS = Path(__file__).resolve().parent / "results" / "per_sample_grads.json"


def small_cnn() -> tuple[nn.Module, tuple[int, ...]]:
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3),
        nn.GroupNorm(4, 16),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * 11 * 11, 32),
        nn.ReLU(),
        nn.Linear(32, 1),
    )
    return model, (3, 50, 50)


def mlp() -> tuple[nn.Module, tuple[int, ...]]:
    model = nn.Sequential(
        nn.Linear(30, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 1)
    )
    return model, (30,)


def vmap_grads(model: nn.Module) -> Callable[[torch.Tensor, torch.Tensor], dict]:
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss_one(p: dict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = functional_call(model, p, (x.unsqueeze(0),))
        return nn.functional.binary_cross_entropy_with_logits(out, y.view(1, 1))

    per_example = vmap(grad(loss_one), in_dims=(None, 0, 0))

    def run(x: torch.Tensor, y: torch.Tensor) -> dict:
        return per_example(params, x, y)

    return run


def opacus_grads(model: nn.Module) -> Callable[[torch.Tensor, torch.Tensor], dict]:
    # Opacus hooks the modules it wraps; keep them off the model vmap runs on.
    gsm = GradSampleModule(copy.deepcopy(model), loss_reduction="sum")

    def run(x: torch.Tensor, y: torch.Tensor) -> dict:
        gsm.zero_grad(set_to_none=True)
        out = gsm(x)
        loss = nn.functional.binary_cross_entropy_with_logits(out, y.view(-1, 1), reduction="sum")
        loss.backward()
        return {k: p.grad_sample for k, p in gsm.named_parameters()}

    return run


def time_pair(
    first: Callable[[], object], second: Callable[[], object], repeats: int, device: torch.device
) -> tuple[float, float]:
    """Median times of two functions, run alternately so that load on a shared machine
    slows both alike."""

    def once(fn: Callable[[], object]) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    first(), second()  # warm-up
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        times[0].append(once(first))
        times[1].append(once(second))
    return statistics.median(times[0]), statistics.median(times[1])


def check_agree(a: dict, b: dict) -> float:
    """Largest absolute difference between the two methods' per-example gradients."""
    worst = 0.0
    for key, ga in a.items():
        gb = b[f"_module.{key}"]
        worst = max(worst, (ga - gb).abs().max().item())
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 64, 256])
    size_flags(parser, RESULTS, quick="2 repeats, batches 16 and 64", tiny="1 repeat of batch 4")
    args = parser.parse_args()
    if args.tiny:
        args.repeats, args.batch_sizes = 1, [4]
    elif args.quick:
        args.repeats, args.batch_sizes = 2, [16, 64]
    device = torch.device(args.device)
    warnings.filterwarnings("ignore", message="Full backward hook is firing")
    rows = []
    for name, factory in (("cnn_3x50x50", small_cnn), ("mlp_30_256_256_1", mlp)):
        for batch in args.batch_sizes:
            torch.manual_seed(0)
            model, shape = factory()
            model = model.to(device)
            x = torch.randn(batch, *shape, device=device)
            y = torch.randint(0, 2, (batch,), device=device).float()
            by_vmap = vmap_grads(model)
            by_opacus = opacus_grads(model)
            diff = check_agree(by_vmap(x, y), by_opacus(x, y))
            t_vmap, t_opacus = time_pair(
                lambda f=by_vmap, x=x, y=y: f(x, y),
                lambda f=by_opacus, x=x, y=y: f(x, y),
                args.repeats,
                device,
            )
            rows.append(
                {
                    "model": name,
                    "params": sum(p.numel() for p in model.parameters()),
                    "batch_size": batch,
                    "vmap_ms": round(t_vmap * 1e3, 3),
                    "opacus_ms": round(t_opacus * 1e3, 3),
                    "opacus_over_vmap": round(t_opacus / t_vmap, 3),
                    "max_abs_diff": diff,
                }
            )
    header = f"{'model':<18}{'params':>8}{'batch':>7}{'vmap ms':>10}{'opacus ms':>11}{'ratio':>7}"
    print(f"device={device} torch={torch.__version__} threads={torch.get_num_threads()}")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['model']:<18}{r['params']:>8}{r['batch_size']:>7}"
            f"{r['vmap_ms']:>10.2f}{r['opacus_ms']:>11.2f}{r['opacus_over_vmap']:>7.2f}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "device": str(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "repeats": args.repeats,
        "note": "median wall time of one per-example gradient pass; ratio > 1: vmap faster",
    }
    args.out.write_text(
        json.dumps({"meta": meta, "machine": machine(), "rows": rows}, indent=2) + "\n"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
