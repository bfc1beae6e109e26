"""Per-example clipping layer by layer, from one ordinary backward pass (fast-DP's
ghost norms with book-keeping, for models whose parameters are all in Dense and
Convolution layers).

Why: `vmap(grad)` builds every example's whole gradient (batch x params floats) and
clipping then reads it four or five times; on the MLP of issue 9 at batch 256 that was
about 15 ms of a 21 ms step, against 0.4 ms for the non-private forward and backward
(the profile is in `benchmarks/training.py`). Here one forward pass records each
Dense / Convolution layer's input `a` and one backward pass of the summed loss gives
the gradient `g` of that loss with respect to the layer's pre-activation. A batch's
examples do not interact (no BatchNorm), so row i of `g` is example i's own backprop,
and example i's weight gradient is `g_i^T a_i` (over the T positions of a convolution's
unfolded patches, T = 1 for a Dense layer on flat inputs). Then:

- its squared norm, without building it where that is cheaper ("ghost norm"):
  `|g_i|^2 |a_i|^2` when T = 1, else `sum_ts (a_i a_i^T)_ts (g_i g_i^T)_ts`, which costs
  T^2 (p + d) against p d T to build the p x d gradient; each layer takes the cheaper.
  Where a convolution builds it, it takes the faster, for its shapes on its device, of
  the weight half of its own backward vmapped over the batch and unfolded patches
  times backprops (timed once per process);
- the clipped sum: each layer's scaled backprops times its inputs, one matrix product
  (or, where the per-example gradients were built, one weighted sum of them).
  Book-keeping: clip factors are known only once every layer's norm is, so the sum
  is taken after the backward pass from what it kept, with no second backward.

Rows that did not fit, or whose gradient is not finite, get factor 0 and their inputs
and backprops are zeroed by `torch.where`: the same operations for every row.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import linalg

from veil.engine._dpsgd import clip_scale
from veil.engine._modules import ConvModule, DenseModule, Tape, VeilModule
from veil.engine._objective import Objective

__all__ = ["Backprops", "LayerTerms", "backprops", "clip_layerwise", "supports"]


@dataclass(frozen=True)
class LayerTerms:
    """One layer's share of a batch: per-example squared norms and what sums it.

    Either `per_example` holds each example's weight gradient (B, p, d), or `inputs`
    (B, T, d) and `backprops` (B, T, p) are kept to sum it by one matrix product."""

    weight: str
    bias: str | None
    shape: torch.Size
    per_example: torch.Tensor | None
    inputs: torch.Tensor | None
    backprops: torch.Tensor | None
    bias_grads: torch.Tensor | None  # (B, p), kept where per_example is built
    sq_norms: torch.Tensor  # (B,) weight and bias together


@dataclass(frozen=True)
class Backprops:
    """What one forward and backward pass over a batch leaves for clipping."""

    layers: tuple[LayerTerms, ...]
    losses: torch.Tensor
    outputs: torch.Tensor


def supports(module: VeilModule) -> bool:
    """Whether every parameter of `module` is in a Dense or Convolution layer."""
    return all(
        isinstance(layer, DenseModule | ConvModule)
        for layer in module.children()
        if next(layer.parameters(recurse=False), None) is not None
    )


def backprops(
    module: VeilModule,
    objective: Objective,
    x: torch.Tensor,
    y: torch.Tensor,
    masks: Sequence[torch.Tensor],
) -> Backprops:
    """One forward and backward pass over the batch; no parameter's `.grad` is touched."""
    names = {layer: name for name, layer in module.named_children()}
    tape: Tape = []
    out = module(x, masks=list(masks), logits=True, tape=tape)
    losses = objective.per_example(out, y)
    grads = torch.autograd.grad(losses.sum(), [z for _, _, z in tape])
    layers = tuple(
        _terms(names[layer], layer, a.detach(), g)
        for (layer, a, _), g in zip(tape, grads, strict=True)
    )
    return Backprops(layers, losses.detach(), out.detach())


def _terms(
    name: str, layer: DenseModule | ConvModule, a: torch.Tensor, g: torch.Tensor
) -> LayerTerms:
    batch = a.shape[0]
    if isinstance(layer, ConvModule):
        bias_grads = g.flatten(2).sum(2)
        positions, p = g[0, 0].numel(), g.shape[1]
        d = layer.weight[0].numel()
        if positions * (p + d) >= p * d:
            per_example = _conv_weight_grads(layer, a, g)
            return _built(name, layer, per_example, bias_grads)
        inputs, grads = _patches(layer, a), g.flatten(2).transpose(1, 2)
    else:
        inputs = a.reshape(batch, -1, a.shape[-1])
        grads = g.reshape(batch, -1, g.shape[-1])
        positions, d, p = inputs.shape[1], inputs.shape[2], grads.shape[2]
        bias_grads = grads.reshape(batch, p) if positions == 1 else grads.sum(1)
        if positions > 1 and positions * (p + d) >= p * d:
            return _built(name, layer, torch.bmm(grads.transpose(1, 2), inputs), bias_grads)
    has_bias = layer.bias is not None
    if positions == 1:  # |g a^T|^2 = |g|^2 |a|^2, and the bias's gradient is g itself
        flat_a, flat_g = inputs.reshape(batch, d), grads.reshape(batch, p)
        sq_a, sq_g = linalg.vecdot(flat_a, flat_a), linalg.vecdot(flat_g, flat_g)
        sq = (sq_a + 1.0) * sq_g if has_bias else sq_a * sq_g
    else:
        gram_a = torch.bmm(inputs, inputs.transpose(1, 2))
        gram_g = torch.bmm(grads, grads.transpose(1, 2))
        sq = (gram_a * gram_g).sum((1, 2))
        if has_bias:
            sq = sq + linalg.vecdot(bias_grads, bias_grads)
    return LayerTerms(
        weight=f"{name}.weight",
        bias=f"{name}.bias" if has_bias else None,
        shape=layer.weight.shape,
        per_example=None,
        inputs=inputs,
        backprops=grads,
        bias_grads=None,  # the clipped sum takes it from the scaled backprops
        sq_norms=sq,
    )


def _built(
    name: str, layer: DenseModule | ConvModule, per_example: torch.Tensor, bias_grads: torch.Tensor
) -> LayerTerms:
    """Terms of a layer whose per-example weight gradients (B, p, d) were built."""
    sq = per_example.square().sum((1, 2))
    has_bias = layer.bias is not None
    return LayerTerms(
        weight=f"{name}.weight",
        bias=f"{name}.bias" if has_bias else None,
        shape=layer.weight.shape,
        per_example=per_example,
        inputs=None,
        backprops=None,
        bias_grads=bias_grads if has_bias else None,
        sq_norms=sq + bias_grads.square().sum(1) if has_bias else sq,
    )


def _conv_weight_grads(layer: ConvModule, a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Each example's weight gradient (B, p, C*kh*kw), by whichever of two ways ran
    faster for this layer's shapes on this device, measured once per process.

    Neither wins everywhere (`benchmarks/profile_step.py`): on one CPU thread at batch
    256 the vmapped backward took 25 ms against 70-84 unfolded for 32 filters on 22x22
    outputs; on an H200 at batch 128 it took 0.36 ms against 0.92 for 3 -> 32 channels
    on 32x32 inputs, but 3.9 ms against 0.95 for 32 -> 64 on 15x15. The choice depends
    on shapes alone, never on the data, and both give the same sums."""
    key = (a.device, tuple(a.shape[1:]), tuple(layer.weight.shape), layer.stride, layer.padding)
    builder = _FASTEST.get(key)
    if builder is None:
        builder = _FASTEST[key] = _fastest(layer, a, g)
    return builder(layer, a, g)


def _fastest(layer: ConvModule, a: torch.Tensor, g: torch.Tensor) -> ConvBuilder:
    """The builder whose best of three runs, after a warm-up (kernels picked, memory
    cached), was fastest. The builders take turns, so that a stretch of other work on
    shared cores slows both rather than one: one run can wait for a busy core far longer
    than it computes."""

    def seconds(builder: ConvBuilder) -> float:
        if a.device.type == "cuda":
            torch.cuda.synchronize(a.device)
        start = time.perf_counter()
        builder(layer, a, g)
        if a.device.type == "cuda":
            torch.cuda.synchronize(a.device)
        return time.perf_counter() - start

    for builder in BUILDERS:
        builder(layer, a, g)
    best = dict.fromkeys(BUILDERS, float("inf"))
    for _ in range(3):
        for builder in BUILDERS:
            best[builder] = min(best[builder], seconds(builder))
    return min(BUILDERS, key=best.__getitem__)


def conv_grads_vmap(layer: ConvModule, a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    weight = layer.weight.detach()

    def one(a_i: torch.Tensor, g_i: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten.convolution_backward(
            g_i.unsqueeze(0),
            a_i.unsqueeze(0),
            weight,
            None,
            layer.stride,
            layer.padding,
            layer.dilation,
            False,
            (0, 0),
            1,
            (False, True, False),
        )[1]

    return torch.func.vmap(one)(a, g).flatten(2)


def conv_grads_unfold(layer: ConvModule, a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Backprops (B, p, T) times input patches (B, T, d). On a channels-last input (the
    engine's images on the CPU) the patches are copied in (kh, kw, C) order, which reads
    the input in memory order (2 to 3x faster than the weight's order on the IDC and
    CNN32 layers), and the small (B, p, d) product is put in the weight's order after."""
    if not a.is_contiguous(memory_format=torch.channels_last):
        return torch.bmm(g.flatten(2), _patches(layer, a))
    grads = torch.bmm(g.flatten(2), _patches(layer, a, kernel_first=True))
    kh, kw = layer.kernel_size
    return grads.unflatten(2, (kh * kw, -1)).transpose(2, 3).flatten(2)


def _patches(layer: ConvModule, a: torch.Tensor, *, kernel_first: bool = False) -> torch.Tensor:
    """Each example's input patches (B, T, C*kh*kw), in the weight's (C, kh, kw) order
    (`kernel_first`: in (kh, kw, C) order): `F.unfold(a).transpose(1, 2)`, from a strided
    view and one copy. (`F.unfold` loops over the batch: on a GPU one kernel launch per
    example.)"""
    (kh, kw), (sh, sw), (ph, pw) = layer.kernel_size, layer.stride, layer.padding
    padded = F.pad(a, (pw, pw, ph, ph)) if ph or pw else a
    windows = padded.unfold(2, kh, sh).unfold(3, kw, sw)  # B, C, OH, OW, kh, kw
    batch, channels, out_h, out_w = windows.shape[:4]
    order = (0, 2, 3, 4, 5, 1) if kernel_first else (0, 2, 3, 1, 4, 5)
    return windows.permute(order).reshape(batch, out_h * out_w, channels * kh * kw)


ConvBuilder = Callable[[ConvModule, torch.Tensor, torch.Tensor], torch.Tensor]
BUILDERS: tuple[ConvBuilder, ...] = (conv_grads_vmap, conv_grads_unfold)
_FASTEST: dict[tuple, ConvBuilder] = {}


def clip_layerwise(
    terms: Backprops, max_grad_norm: float, valid: torch.Tensor | None = None
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """`clip_and_sum` from layer terms: each example's whole gradient clipped to L2 norm
    `max_grad_norm`, summed; rows that `valid` marks False or whose gradient is not
    finite contribute zero. Returns (sums by parameter name, norms before clipping)."""
    norms = torch.stack([t.sq_norms for t in terms.layers]).sum(0).sqrt()
    keep = norms.isfinite() if valid is None else norms.isfinite() & valid
    scale = clip_scale(norms, max_grad_norm, keep)
    sums: dict[str, torch.Tensor] = {}
    rows = keep.reshape(-1, 1, 1)
    for t in terms.layers:
        if t.per_example is not None:
            total = torch.einsum("b,bpd->pd", scale, torch.where(rows, t.per_example, 0.0))
            if t.bias is not None and t.bias_grads is not None:
                kept = torch.where(keep.unsqueeze(1), t.bias_grads, 0.0)
                sums[t.bias] = torch.einsum("b,bp->p", scale, kept)
        else:
            assert t.inputs is not None and t.backprops is not None
            weighted = torch.where(rows, t.backprops * scale.reshape(-1, 1, 1), 0.0).flatten(0, 1)
            inputs = torch.where(rows, t.inputs, 0.0)
            total = weighted.T @ inputs.flatten(0, 1)
            if t.bias is not None:  # each example's bias gradient is its backprops' sum
                sums[t.bias] = weighted.sum(0)
        sums[t.weight] = total.reshape(t.shape)
    return sums, norms
