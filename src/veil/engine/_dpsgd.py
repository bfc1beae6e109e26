"""The DP-SGD gradient: per-example gradients, clipping, noise.

Per-example gradients come from `torch.func` (`functional_call` inside
`vmap(grad(...))`), with no Python loop over examples: `benchmarks/per_sample_grads.py`
measured it against Opacus' GradSampleModule and it was as fast or faster on both
models. Dropout masks arrive as inputs (drawn by the trainer's own generator) rather
than being drawn inside vmap, so `randomness="error"` can promise that nothing in the
step draws from torch's global random state: seeded runs repeat exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch.func import functional_call, grad, vmap

from veil.engine._modules import VeilModule
from veil.engine._objective import Objective

__all__ = [
    "PerExample",
    "add_by_subject",
    "clip_and_sum",
    "clip_by_subject",
    "clip_scale",
    "finite_examples",
    "per_example_grads",
]

# (grads {name: (B, *shape)}, losses (B,), outputs (B, *out)), outputs as per_example saw them
PerExample = tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]


def per_example_grads(module: VeilModule, objective: Objective) -> Callable[..., PerExample]:
    """A function `(params, buffers, x, y, masks) -> PerExample` over a batch."""

    def one(
        params: dict[str, torch.Tensor],
        buffers: dict[str, torch.Tensor],
        x: torch.Tensor,
        y: torch.Tensor,
        masks: Sequence[torch.Tensor],
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        out = functional_call(
            module,
            (params, buffers),
            (x.unsqueeze(0),),
            {"masks": [m.unsqueeze(0) for m in masks], "logits": True},
        )
        loss = objective.per_example(out, y.unsqueeze(0))
        return loss.sum(), (loss.squeeze(0), out.squeeze(0))

    batched = vmap(grad(one, has_aux=True), in_dims=(None, None, 0, 0, 0), randomness="error")

    def run(
        params: dict[str, torch.Tensor],
        buffers: dict[str, torch.Tensor],
        x: torch.Tensor,
        y: torch.Tensor,
        masks: Sequence[torch.Tensor],
    ) -> PerExample:
        grads, (losses, outputs) = batched(params, buffers, x, y, list(masks))
        return grads, losses, outputs

    return run


def clip_and_sum(
    grads: dict[str, torch.Tensor], max_grad_norm: float, valid: torch.Tensor | None = None
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Clip each example's whole gradient to L2 norm `max_grad_norm` and sum over examples.

    An example whose gradient is not finite, or that `valid` marks False (a row that
    did not fit), contributes zero; the same operations run whichever examples these are.
    Returns (sums, norms before clipping).
    """
    flat = [g.flatten(1) for g in grads.values()]
    finite = finite_examples(grads, valid)
    norms = (
        torch.stack([torch.where(finite.unsqueeze(1), f, 0.0).pow(2).sum(1) for f in flat])
        .sum(0)
        .sqrt()
    )
    scale = clip_scale(norms, max_grad_norm, finite)
    sums = {
        name: torch.einsum("b,b...->...", scale, torch.where(_expand(finite, g), g, 0.0))
        for name, g in grads.items()
    }
    return sums, norms


def clip_scale(norms: torch.Tensor, max_grad_norm: float, keep: torch.Tensor) -> torch.Tensor:
    """Each example's factor: min(1, C / norm), and 0 where `keep` is False."""
    return torch.where(keep, (max_grad_norm / (norms + 1e-6)).clamp(max=1.0), 0.0)


def finite_examples(
    grads: dict[str, torch.Tensor], valid: torch.Tensor | None = None
) -> torch.Tensor:
    """Which examples have a finite gradient (and are `valid`), one bool per example."""
    finite = torch.stack([g.flatten(1).isfinite().all(1) for g in grads.values()]).all(0)
    return finite if valid is None else finite & valid


def add_by_subject(
    sums: dict[str, torch.Tensor],
    grads: dict[str, torch.Tensor],
    keep: torch.Tensor,
    groups: torch.Tensor,
) -> None:
    """Add each kept example's gradient to its subject's row of `sums` ({name: (S, *shape)});
    the others add zero, with the same operations."""
    for name, g in grads.items():
        sums[name].index_add_(0, groups, torch.where(_expand(keep, g), g, 0.0))


def _expand(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return mask.reshape(-1, *([1] * (like.ndim - 1)))


def clip_by_subject(
    per_example: Callable[[slice], tuple[dict[str, torch.Tensor], torch.Tensor]],
    groups: np.ndarray,
    max_grad_norm: float,
    *,
    chunk: int,
    like: dict[str, torch.Tensor],
) -> dict[str, torch.Tensor]:
    """The sum over subjects of each one's rows' summed gradient, clipped; `groups`
    (row i's subject, sorted), `per_example(rows)` the gradients of a slice of rows and
    which of them are valid, `like` the parameters (shapes and devices).

    Which rows share a subject is private, so the work must not depend on it: the rows
    go in fixed chunks of `chunk`, as without subjects, each chunk's gradients are
    summed into `chunk` slots by subject (counted from the chunk's first subject: each
    row starts at most one new one), and the slots are clipped and summed, the empty
    ones adding zero. A subject whose rows go on into the next chunk is carried over
    into that chunk's first slot; the same operations run whether one is or not.
    """
    rows = int(groups.shape[0])
    ids = torch.as_tensor(groups, device=next(iter(like.values())).device)
    carry = {name: torch.zeros_like(p) for name, p in like.items()}
    sums = {name: torch.zeros_like(p) for name, p in like.items()}
    for start in range(0, rows, chunk):
        part = slice(start, min(start + chunk, rows))
        grads, valid = per_example(part)
        slots = {name: torch.zeros((chunk, *p.shape), device=p.device) for name, p in like.items()}
        for name in slots:
            slots[name][0] += carry[name]
        local = ids[part] - ids[start]
        add_by_subject(slots, grads, finite_examples(grads, valid), local)
        last = int(local[-1])
        going_on = float(
            part.stop < rows and groups[min(part.stop, rows - 1)] == groups[part.stop - 1]
        )
        for name, slot in slots.items():
            carry[name] = slot[last] * going_on
            slot[last] *= 1.0 - going_on
        clipped, _ = clip_and_sum(slots, max_grad_norm, None)
        for name in sums:
            sums[name] += clipped[name]
    return sums
