"""Where one DP-SGD step of the engine spends its time, per model and device (issue 9).

For each model of `training.py` (or `--model`), on `--device`:

- the parts of a step, each timed alone (synchronised on a GPU): moving the batch to
  the device, one forward and backward pass (`backprops`), clipping and summing
  (`clip_layerwise`), secure noise for every parameter, the optimizer update; beside
  them the whole `trainer.step` and a non-private torch step of the same network;
- for every convolution that builds per-example weight gradients, both ways of
  building them (`conv_grads_vmap`, `conv_grads_unfold`); the engine times both once
  per layer and device and keeps the faster;
- the top operators of `--profile-steps` steps by self time (torch.profiler).

Prints tables and writes JSON (by default ``benchmarks/results/profile_step.json``).

    python benchmarks/profile_step.py [--quick | --tiny] [--device cuda] [--model cnn32]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _sizes import machine  # noqa: E402
from training import BATCHES, CLIP, Workload, _criterion, _data, _spec, _torch_model  # noqa: E402

from veil.engine import DPTrainer  # noqa: E402
from veil.engine._data import input_tensor, target_tensor  # noqa: E402
from veil.engine._layerwise import (  # noqa: E402
    backprops,
    clip_layerwise,
    conv_grads_unfold,
    conv_grads_vmap,
)
from veil.engine._modules import ConvModule, Tape  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "profile_step.json"


def _timer(device: torch.device, repeats: int) -> Callable[[Callable[[], object]], float]:
    def median_ms(work: Callable[[], object]) -> float:
        work()  # warm-up
        times = []
        for _ in range(repeats):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            work()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append((time.perf_counter() - start) * 1e3)
        return round(statistics.median(times), 3)

    return median_ms


def _conv_builders(trainer: DPTrainer, x: torch.Tensor, timed: Callable) -> list[dict]:
    tape: Tape = []
    trainer.module(x, masks=[], logits=True, tape=tape)
    rows = []
    for layer, a, z in tape:
        if not isinstance(layer, ConvModule):
            continue
        g = torch.randn_like(z)
        positions, p, d = g[0, 0].numel(), g.shape[1], layer.weight[0].numel()
        if positions * (p + d) < p * d:
            continue  # a ghost norm: nothing is built
        rows.append(
            {
                "layer": f"conv {tuple(layer.weight.shape)} on {tuple(a.shape[1:])}",
                "vmap_ms": timed(lambda la=layer, a=a, g=g: conv_grads_vmap(la, a, g)),
                "unfold_ms": timed(lambda la=layer, a=a, g=g: conv_grads_unfold(la, a, g)),
            }
        )
    return rows


def profile(work: Workload, device: torch.device, repeats: int, profile_steps: int) -> dict:
    x, y = _data(work)
    xb, yb = x[: work.batch], y[: work.batch]
    trainer = DPTrainer(_spec(work), device=device)
    timed = _timer(device, repeats)
    objective, spec = trainer.objective, trainer.spec
    xt, _ = input_tensor(xb, device)
    yt, valid = target_tensor(objective, spec, yb, device)
    terms = backprops(trainer.module, objective, xt, yt, [])
    model, criterion = _torch_model(work.name).to(device), _criterion(work)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    x_float = xt.clone()
    y_torch = yt if work.classes > 1 else yt.float()

    def torch_step() -> None:
        criterion(model(x_float), y_torch).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    parts = {
        "to_device": timed(
            lambda: (input_tensor(xb, device), target_tensor(objective, spec, yb, device))
        ),
        "backprops": timed(lambda: backprops(trainer.module, objective, xt, yt, [])),
        "clip_layerwise": timed(lambda: clip_layerwise(terms, CLIP, valid)),
        "secure_noise": timed(lambda: trainer._random.normal(spec.param_count, device)),
        "trainer.step": timed(lambda: trainer.step(xb, yb)),
        "torch_step": timed(torch_step),
    }
    convs = _conv_builders(trainer, xt, timed) if work.images else []
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(profile_steps):
            trainer.step(xb, yb)
        if device.type == "cuda":
            torch.cuda.synchronize()
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    top = prof.key_averages().table(sort_by=key, row_limit=12)
    return {
        "model": work.name,
        "batch": work.batch,
        "params": spec.param_count,
        "parts_ms": parts,
        "conv_builders": convs,
        "top_ops": top,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="fewer repeats")
    size.add_argument("--tiny", action="store_true", help="seconds: a smoke test")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", choices=sorted(BATCHES), action="append")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    repeats, steps = (2, 2) if args.tiny else (10, 5) if args.quick else (30, 20)
    results = []
    for name in args.model or sorted(BATCHES):
        batch, shape, classes = BATCHES[name]
        batch = 8 if args.tiny else batch
        row = profile(Workload(name, batch, batch, shape, classes), device, repeats, steps)
        results.append(row)
        print(f"== {name} (batch {batch}, {row['params']:,} parameters) on {device}")
        print(" | ".join(f"{k} {v:.2f} ms" for k, v in row["parts_ms"].items()))
        for conv in row["conv_builders"]:
            print(f"  {conv['layer']}: vmap {conv['vmap_ms']} ms, unfold {conv['unfold_ms']} ms")
        print(row["top_ops"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    info = {**machine(), "device": str(device), "torch_threads": torch.get_num_threads()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    args.out.write_text(
        json.dumps({"benchmark": "profile_step", "results": results, "machine": info}, indent=2)
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
