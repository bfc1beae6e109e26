"""Flat, pickle-free trainer state: named tensors (for safetensors) plus a JSON dict."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from veil._exceptions import ValidationError

__all__ = [
    "CHECKPOINT_FORMAT",
    "numpy_state",
    "optimizer_state",
    "restore_numpy_state",
    "restore_optimizer_state",
]

CHECKPOINT_FORMAT = 1


def numpy_state(rng: np.random.Generator) -> dict[str, Any]:
    """PCG64 state with its 128-bit integers as hex strings (safe in any JSON store)."""
    state = rng.bit_generator.state
    return {
        "bit_generator": state["bit_generator"],
        "state": {k: hex(v) for k, v in state["state"].items()},
        "has_uint32": int(state["has_uint32"]),
        "uinteger": int(state["uinteger"]),
    }


def restore_numpy_state(rng: np.random.Generator, saved: dict[str, Any]) -> None:
    try:
        rng.bit_generator.state = {
            "bit_generator": saved["bit_generator"],
            "state": {k: int(v, 16) for k, v in saved["state"].items()},
            "has_uint32": saved["has_uint32"],
            "uinteger": saved["uinteger"],
        }
    except (KeyError, TypeError, ValueError) as err:
        raise ValidationError(f"Checkpoint sampler state is malformed: {err}") from None


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise ValidationError(f"Optimizer setting of type {type(value).__name__} is not JSON")


def optimizer_state(
    optimizer: torch.optim.Optimizer, names: list[str]
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors named `optim.<param name>.<key>`, and the rest as JSON."""
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, entry in state["state"].items():
        for key, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"optim.{names[index]}.{key}"] = value.detach().cpu().clone().contiguous()
            else:
                scalars.setdefault(names[index], {})[key] = _jsonable(value)
    groups = [
        {k: _jsonable(v) for k, v in group.items() if k != "params"}
        for group in state["param_groups"]
    ]
    return tensors, {"param_groups": groups, "scalars": scalars}


def restore_optimizer_state(
    optimizer: torch.optim.Optimizer,
    names: list[str],
    tensors: dict[str, torch.Tensor],
    saved: dict[str, Any],
) -> None:
    index = {name: i for i, name in enumerate(names)}
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        name, _, field = key.removeprefix("optim.").rpartition(".")
        if name not in index:
            raise ValidationError(f"Checkpoint has optimizer state for unknown parameter {name!r}")
        state.setdefault(index[name], {})[field] = value
    try:
        for name, entries in saved["scalars"].items():
            state.setdefault(index[name], {}).update(entries)
        groups = [dict(group) for group in saved["param_groups"]]
    except (KeyError, TypeError, AttributeError) as err:
        raise ValidationError(f"Checkpoint optimizer state is malformed: {err}") from None
    if len(groups) != 1:
        raise ValidationError(f"Expected one optimizer param group. Received: {len(groups)}")
    groups[0]["params"] = list(range(len(names)))
    if "betas" in groups[0]:
        groups[0]["betas"] = tuple(groups[0]["betas"])
    try:
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    except (ValueError, KeyError, RuntimeError) as err:
        raise ValidationError(f"Checkpoint optimizer state does not fit: {err}") from None
