"""Pointers to results that stay on the node until published.

`WeightsPointer` (from `model_ptr.weights()`) and `PrivatePointer` (a step's loss or
predictions) hold only ids and public facts. Their values leave the node only through
`publish()`, which charges the privacy budget and returns a `Published` handle.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NoReturn

from veil._exceptions import PermissionDenied
from veil.client._http import Http
from veil.client._releases import Published

__all__ = ["PrivatePointer", "WeightsPointer"]


class WeightsPointer:
    """The weights of a model on the node; `publish()` releases them, charging the cart."""

    def __init__(self, http: Http, model_id: str) -> None:
        self._http = http
        self.model_id = model_id

    def publish(self) -> Published:
        """Charge what training added since the last publish, and release the weights."""
        data = self._http.post(f"/models/{self.model_id}/weights/publish")
        return Published.from_json(self._http, data)

    def get(self) -> NoReturn:
        raise PermissionDenied(
            "Model weights leave the node only through publish(), which charges their "
            "privacy cost: use weights_ptr.publish().get().",
            model_id=self.model_id,
        )

    def __repr__(self) -> str:
        return f"<WeightsPointer model={self.model_id}>"


class PrivatePointer:
    """A private result on the node; only its kind and shape are public."""

    def __init__(self, http: Http, id: str, kind: str, shape: Sequence[int]) -> None:
        self._http = http
        self.id = id
        self.kind = kind
        self.shape = tuple(shape)

    def publish(
        self,
        sigma: float | None = None,
        epsilon: float | None = None,
        *,
        clip: float | None = None,
    ) -> Published:
        """Release the value with Gaussian noise: give a noise multiplier `sigma` or a
        target `epsilon`, not both.

        Each row's value is bounded first (a loss to [0, loss_bound], a row of
        predictions to its L2 norm: 1 for softmax, sqrt(outputs) for sigmoid), and the
        noise std is sigma x that bound (divided by the rows, for a mean). `clip` sets
        another L2 bound per row; it is required for outputs with no natural bound.
        The rows it came from are charged in the model's cart, and the model that
        computed the value is revealed with it, so its unpaid training is charged too.
        """
        body = {
            k: v
            for k, v in (("sigma", sigma), ("epsilon", epsilon), ("clip", clip))
            if v is not None
        }
        data = self._http.post(f"/objects/{self.id}/publish", json=body)
        return Published.from_json(self._http, data)

    def delete(self) -> None:
        """Delete the object from the node, freeing room in your `max_objects` quota;
        what you published of it stays in your releases."""
        self._http.delete(f"/objects/{self.id}")

    def get(self) -> NoReturn:
        raise PermissionDenied(
            f"A private {self.kind} leaves the node only through publish(sigma=...) or "
            "publish(epsilon=...), which adds noise and charges your budget: use "
            "ptr.publish(epsilon=...).get().",
            object_id=self.id,
        )

    def __repr__(self) -> str:
        return f"<PrivatePointer {self.kind} shape={self.shape}>"
