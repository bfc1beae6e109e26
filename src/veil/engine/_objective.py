"""Per-example losses, probabilities and accuracy for a spec's loss.

Fused (model ends in Sigmoid with BinaryCrossEntropy, or Softmax with CrossEntropy):
the loss is taken on the pre-activation with `binary_cross_entropy_with_logits` /
`cross_entropy`, finite for any logit. Otherwise, as Keras, the output is read as
probabilities clipped to [EPS, 1 - EPS]. A loss is always the mean over one example's
values, so each example has one loss; reported losses are clipped to [0, loss_bound].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from veil.engine._build import is_fused
from veil.engine._modules import activate
from veil.nn import BinaryCrossEntropy, CrossEntropy, ModelSpec, final_activation

__all__ = ["EPS", "Objective"]

EPS = 1e-7


@dataclass(frozen=True)
class Objective:
    kind: Literal["bce", "ce", "mse"]
    fused: bool
    final: str | None
    loss_bound: float

    @classmethod
    def from_spec(cls, spec: ModelSpec) -> Objective:
        if isinstance(spec.loss, BinaryCrossEntropy):
            kind: Literal["bce", "ce", "mse"] = "bce"
        elif isinstance(spec.loss, CrossEntropy):
            kind = "ce"
        else:
            kind = "mse"
        return cls(kind, is_fused(spec), final_activation(spec.layers), spec.loss_bound)

    def per_example(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Loss of each example, shape (B,); `out` is the pre-activation when fused."""
        if self.kind == "ce":
            if self.fused:
                return F.cross_entropy(out, y, reduction="none")
            picked = out.gather(1, y.unsqueeze(1)).squeeze(1)
            return -torch.log(picked.clamp(EPS, 1.0 - EPS))
        if self.kind == "bce":
            if self.fused:
                values = F.binary_cross_entropy_with_logits(out, y, reduction="none")
            else:
                p = out.clamp(EPS, 1.0 - EPS)
                values = -(y * torch.log(p) + (1.0 - y) * torch.log1p(-p))
        else:
            values = (out - y) ** 2
        return values.flatten(1).mean(1)

    def probabilities(self, out: torch.Tensor) -> torch.Tensor:
        """The model's output from what `per_example` was given."""
        return activate(self.final, out) if self.fused else out

    def clipped(self, losses: torch.Tensor) -> torch.Tensor:
        """Losses clipped to [0, loss_bound]; a non-finite loss counts as loss_bound."""
        bounded = losses.clamp(0.0, self.loss_bound)
        return torch.where(torch.isfinite(losses), bounded, self.loss_bound)

    def correct(self, probs: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
        """Per-example accuracy in [0, 1] (a share of values for multi-output BCE)."""
        if self.kind == "ce":
            return (probs.argmax(1) == y).float()
        if self.kind == "bce":
            return ((probs > 0.5).float() == y).float().flatten(1).mean(1)
        return None
