"""Model pointers: a model that lives on the node, trained there, never downloaded raw.

`ModelPointer.weights().publish()` is the only way weights leave the node; `step`
returns private pointers whose values leave only through their own `publish()`.
"""

from __future__ import annotations

import warnings
from typing import Any

from tqdm.auto import tqdm

from veil._exceptions import JobFailed, ValidationError
from veil.client._datasets import AssetPointer
from veil.client._http import Http, segment
from veil.client._objects import PrivatePointer, WeightsPointer

__all__ = ["DraftHandle", "MetricsWithheld", "ModelPointer", "ModelsAPI"]

_DONE = ("done", "failed", "cancelled")

_LONGEST_WAIT_S = 10.0  # the most a node holds one progress request (its MAX_WAIT_S)


class MetricsWithheld(UserWarning):
    """A fit's validation metrics were not released: the budget could not pay for them."""


def _pointer_id(ptr: Any, name: str) -> str:
    pointer_id = getattr(ptr, "id", None)
    if not isinstance(pointer_id, str):
        raise ValidationError(
            f"{name} must be a pointer to data on the node (e.g. dataset['train_images'] or a "
            f"slice of it). Received: {type(ptr).__name__}"
        )
    return pointer_id


def _batch(x_ptr: Any, y_ptr: Any) -> dict[str, Any]:
    """x and y for a step or an evaluation: a slice goes as its asset and rows."""
    body: dict[str, Any] = {}
    for name, ptr in (("x", x_ptr), ("y", y_ptr)):
        if isinstance(ptr, AssetPointer):
            body[name], body[f"{name}_rows"] = ptr._named_rows()
        else:
            body[name] = _pointer_id(ptr, f"{name}_ptr")
    return body


class ModelPointer:
    """A compiled model on the node."""

    def __init__(self, http: Http, info: dict[str, Any]) -> None:
        self._http = http
        self._info = info
        self.id: str = info["id"]

    @property
    def spec(self) -> dict[str, Any]:
        return self._info["spec"]

    @property
    def output_shape(self) -> tuple[int | None, ...]:
        return tuple(self._info["output_shape"])

    def refresh(self) -> ModelPointer:
        self._info = self._http.get(f"/models/{self.id}")
        return self

    def _fit_body(self, x_ptr: Any, y_ptr: Any, **kw: Any) -> dict[str, Any]:
        return {"x": _pointer_id(x_ptr, "x_ptr"), "y": _pointer_id(y_ptr, "y_ptr"), **kw}

    def quote(
        self,
        x_ptr: Any,
        y_ptr: Any,
        *,
        max_iter: int = 10,
        batch_size: int = 100,
        validation_split: float = 0.0,
        target_epsilon: float | None = None,
        rows_per_subject: int | None = None,
    ) -> dict[str, Any]:
        """What a planned `fit` would cost, before it runs: `cost` is what it adds to the
        model's `cart` (what publishing the model would add to your epsilon `spent`);
        `cart_after` is the cart right after it. `target_epsilon` caps `cost`."""
        body = self._fit_body(
            x_ptr,
            y_ptr,
            max_iter=max_iter,
            batch_size=batch_size,
            validation_split=validation_split,
            target_epsilon=target_epsilon,
            rows_per_subject=rows_per_subject,
        )
        return self._http.post(f"/models/{self.id}/quote", json=body)

    def fit(
        self,
        x_ptr: Any,
        y_ptr: Any,
        *,
        max_iter: int = 10,
        validation_split: float = 0.0,
        batch_size: int = 100,
        target_epsilon: float | None = None,
        rows_per_subject: int | None = None,
        wait: bool = True,
        poll_seconds: float = 0.5,
    ) -> dict[str, Any]:
        """Train with DP-SGD on the node (`max_iter` epochs of Poisson-sampled steps).

        With `target_epsilon` the node picks the smallest noise whose `cost` (see `quote`)
        stays within it. `wait=True` shows a progress bar and returns the final
        `progress()`; `wait=False` returns the queued job at once.

        On a dataset whose privacy unit is the data subject (`dataset.unit`), the steps
        sample subjects: `batch_size` is the expected number of subjects per step,
        `validation_split` holds out the last fraction of the subjects, and
        `rows_per_subject` is how many of a subject's rows one step takes (at random,
        padded where it owns fewer; by default the dataset's rows per subject).
        """
        body = self._fit_body(
            x_ptr,
            y_ptr,
            max_iter=max_iter,
            batch_size=batch_size,
            validation_split=validation_split,
            target_epsilon=target_epsilon,
            rows_per_subject=rows_per_subject,
        )
        job = self._http.post(f"/models/{self.id}/fit", json=body)
        if not wait:
            return job
        return self.wait(poll_seconds=poll_seconds)

    def wait(self, *, poll_seconds: float = 0.5, show: bool = True) -> dict[str, Any]:
        """Block until the current job ends, with a progress bar; raise if it failed.

        Each poll waits on the node up to `poll_seconds` for the job to move, and returns
        as soon as it does: the end of a fit is seen when it happens (a short fit's end
        may be the first answer).
        """
        poll = min(poll_seconds, _LONGEST_WAIT_S)
        state = self.progress(wait=poll)
        bar = tqdm(total=state.get("steps") or None, unit="step", disable=not show)
        try:
            while True:
                bar.total = state.get("steps") or bar.total
                bar.n = state.get("step", 0)
                bar.set_description(f"epoch {state.get('epoch', 0)}/{state.get('max_iter', '?')}")
                bar.set_postfix(
                    spent=f"{state['spent']:.3f}",
                    cart=f"{state['cart']:.3f}",
                    status=state["status"],
                )
                bar.refresh()
                if state["status"] in _DONE or state["status"] == "idle":
                    break
                state = self.progress(wait=poll)
        finally:
            bar.close()
        if state["status"] == "failed":
            raise JobFailed(f"Training failed: {state.get('error')}", job_id=state.get("job_id"))
        withheld = [m for m in state.get("metrics", []) if m.get("released") is False]
        if withheld:
            epochs = ", ".join(str(m["epoch"]) for m in withheld)
            why = withheld[-1]["withheld"]
            warnings.warn(
                f"Validation metrics of epoch(s) {epochs} were withheld: {why}",
                MetricsWithheld,
                stacklevel=2,
            )
        self._info = {**self._info, "steps": state["total_steps"]}  # refresh() reads the rest
        return state

    def progress(self, *, wait: float = 0.0) -> dict[str, Any]:
        """Status, epoch, step, expected samples, elapsed, and released metrics; `spent`
        (your epsilon spent) and `cart` (what publishing this model now would add).

        With `wait` (seconds, at most 10), a queued or running job's progress is returned
        once it moves (a step count written, an epoch ended, the job ended) or after
        `wait` seconds, whichever comes first.
        """
        params = {"wait": wait} if wait else None
        return self._http.get(f"/models/{self.id}/progress", params=params)

    def cancel(self) -> dict[str, Any]:
        return self._http.post(f"/models/{self.id}/cancel")

    def step(
        self,
        x_ptr: Any,
        y_ptr: Any,
        *,
        validation_split: float = 0.0,
        batch_size: int | None = None,
    ) -> tuple[PrivatePointer, PrivatePointer]:
        """One DP-SGD step on exactly these rows (no sampling); private (loss, predictions).

        `validation_split` holds out the last fraction of the rows from the update; the
        loss and predictions are then those of the held-out rows (a validation loss),
        otherwise of the trained rows. `batch_size` is the most rows one step may take:
        a guard against stepping on a whole asset by mistake, never a split of the batch.
        """
        body = {
            **_batch(x_ptr, y_ptr),
            "validation_split": validation_split,
            "batch_size": batch_size,
        }
        out = self._http.post(f"/models/{self.id}/step", json=body)
        return (
            PrivatePointer(
                self._http, out["loss"]["id"], out["loss"]["kind"], out["loss"]["shape"]
            ),
            PrivatePointer(
                self._http,
                out["predictions"]["id"],
                out["predictions"]["kind"],
                out["predictions"]["shape"],
            ),
        )

    def evaluate(self, x_ptr: Any, y_ptr: Any, *, epsilon: float = 0.1) -> dict[str, Any]:
        """Release the model's noised loss and accuracy on these rows, charged: `epsilon`
        prices the two queries; the answer has each value with its noise std (`loss_std`)
        and clipped to where the true one lies (`loss_clipped`), and the `cost`."""
        body = {**_batch(x_ptr, y_ptr), "epsilon": epsilon}
        return self._http.post(f"/models/{self.id}/evaluate", json=body)

    def delete_objects(self) -> int:
        """Delete every private object this model's steps made (losses, predictions),
        freeing room in your `max_objects` quota; returns how many went. Publish first
        what you want to keep: releases stay."""
        return self._http.delete(f"/models/{self.id}/objects")["deleted"]

    def delete(self) -> None:
        """Delete the model from the node with its checkpoints and private objects,
        freeing room in your quotas; a model in training must be cancelled first. Its
        releases stay (publish its weights first if you want them)."""
        self._http.delete(f"/models/{self.id}")

    def weights(self) -> WeightsPointer:
        """A pointer to the current weights; `.publish()` spends the cart."""
        return WeightsPointer(self._http, self.id)

    def __repr__(self) -> str:
        return f"<ModelPointer {self.id} output={self.output_shape} steps={self._info['steps']}>"


class DraftHandle:
    """A model assembled on the node one layer at a time (flow I)."""

    def __init__(self, http: Http, draft_id: str) -> None:
        self._http = http
        self.id = draft_id

    def add(self, layer_config: dict[str, Any]) -> list[int | None]:
        out = self._http.post(f"/models/drafts/{self.id}/layers", json={"layer": layer_config})
        return out["output_shape"]

    def compile(self, **options: Any) -> ModelPointer:
        info = self._http.post(f"/models/drafts/{self.id}/compile", json=options)
        return ModelPointer(self._http, info)

    def delete(self) -> None:
        """Delete the draft; a model compiled from it stays."""
        self._http.delete(f"/models/drafts/{self.id}")


class ModelsAPI:
    def __init__(self, http: Http) -> None:
        self._http = http

    def create(self, spec: dict[str, Any]) -> ModelPointer:
        return ModelPointer(self._http, self._http.post("/models", json={"spec": spec}))

    def create_draft(self) -> DraftHandle:
        return DraftHandle(self._http, self._http.post("/models/drafts")["id"])

    def discard_drafts(self) -> int:
        """Delete your drafts not compiled yet (flow I), freeing your `max_drafts`
        quota; returns how many went."""
        return self._http.delete("/models/drafts")["deleted"]

    def get(self, model_id: str) -> ModelPointer:
        return ModelPointer(self._http, self._http.get(f"/models/{segment(model_id)}"))

    def list(self) -> list[ModelPointer]:
        return [ModelPointer(self._http, m) for m in self._http.get("/models")]
