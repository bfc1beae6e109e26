"""Releases: the only way a result computed from private data leaves the node.

- `publish_weights` charges a model's cart minus what its earlier releases charged,
  and hands out the weights of its latest checkpoint. It reads two curves from the
  model's row, never the training steps, so its time does not grow with training.
- `publish_object` adds Gaussian noise (std = sigma x the object's L2 sensitivity) to a
  private result. A value computed by a model also reveals that model, so it charges
  the model's unpaid cart as well as the Gaussian.

Each publish is one write transaction (`ledger.charge` + the model's charged curve +
the release row). A weights release's file is hard-linked before the commit: a crash
in between leaves a file no release points to, which `sweep_orphans` removes at start.
"""

from __future__ import annotations

import math
import numbers
import os
import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from veil._exceptions import Conflict, NotFound, ValidationError
from veil.privacy import RdpCurve, calibrate_sigma, gaussian
from veil.server.db.base import new_id
from veil.server.db.engine import Database
from veil.server.db.tables.accounts import ROLE_ADMIN, UserRow
from veil.server.db.tables.ledger import ReleaseRow
from veil.server.db.tables.models import ModelRow, PrivateObjectRow
from veil.server.services import ledger
from veil.server.services.failpoints import failpoint
from veil.server.services.node import get_node
from veil.server.storage.files import NodeFiles, atomic_write

__all__ = [
    "KIND_OBJECT",
    "KIND_WEIGHTS",
    "ReleasePayload",
    "get_release",
    "list_releases",
    "publish_object",
    "publish_weights",
    "release_payload",
    "sweep_orphans",
]

KIND_WEIGHTS = "weights"
KIND_OBJECT = "object"
_WEIGHTS_SUFFIX = ".safetensors"


@dataclass(frozen=True)
class ReleasePayload:
    """What a release hands out: a file (weights) or a JSON result (objects)."""

    release: ReleaseRow
    path: Path | None
    result: dict[str, Any] | None


def _owned_model(session: Session, *, user: UserRow, model_id: str) -> ModelRow:
    """The caller's model, locked against a concurrent checkpoint or publish of it."""
    model = session.scalars(
        select(ModelRow)
        .where(ModelRow.id == model_id, ModelRow.owner_id == user.id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).first()
    if model is None:  # another user's model answers as if it did not exist
        raise NotFound(f"No model {model_id!r} among your models.", model_id=model_id)
    return model


def _unpaid(model: ModelRow) -> RdpCurve:
    return RdpCurve.from_list(model.cart_curve) - RdpCurve.from_list(model.charged_curve)


def _relative(files: NodeFiles, path: Path) -> str:
    return path.relative_to(files.root).as_posix()


def _link_or_copy(source: Path, target: Path) -> None:
    """Hard-link `source` at `target` (checkpoints are never rewritten in place); copy if
    the file system cannot link."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except FileExistsError:
        raise
    except OSError:  # no hard links on this file system, or another device
        atomic_write(target, lambda tmp: shutil.copyfile(source, tmp))


def publish_weights(db: Database, files: NodeFiles, *, user: UserRow, model_id: str) -> ReleaseRow:
    """Release the weights of the caller's model, charging its cart minus what was paid."""
    with db.write_session() as session:
        delta = get_node(session).delta
        model = _owned_model(session, user=user, model_id=model_id)
        source = files.weights(model.id, model.version)
        if not source.is_file():
            raise Conflict(
                f"Model {model_id!r} has no weights at version {model.version} yet.",
                model_id=model_id,
                version=model.version,
            )
        release_id = new_id()
        target = files.release(release_id, _WEIGHTS_SUFFIX)
        release = ledger.charge(
            session,
            user=user,
            curve_added=_unpaid(model),
            delta=delta,
            kind=KIND_WEIGHTS,
            mechanism="dp-sgd",
            params={"version": model.version, "steps": model.steps},
            model_id=model.id,
            result_path=_relative(files, target),
            release_id=release_id,
        )
        model.charged_curve = list(model.cart_curve)
        session.flush()
        try:
            _link_or_copy(source, target)
            failpoint("publish.before_commit")
        except BaseException:
            target.unlink(missing_ok=True)
            raise
        # If the commit fails the file stays: whether it committed may be unknown, and
        # a paid result must not lose its file. An orphan is swept at the next start.
        session.commit()
    failpoint("publish.after_commit")
    return release


def _check_noise(sigma: float | None, epsilon: float | None) -> None:
    if (sigma is None) == (epsilon is None):
        raise ValidationError(
            "publish expects exactly one of sigma (noise multiplier) or epsilon (target). "
            f"Received: sigma={sigma!r}, epsilon={epsilon!r}",
            sigma=sigma,
            epsilon=epsilon,
        )
    name, value = ("sigma", sigma) if sigma is not None else ("epsilon", epsilon)
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not 0 < value < math.inf:
        raise ValidationError(
            f"publish expects {name} as a finite number > 0. Received: {name}={value!r}",
            field=name,
        )


def _object_path(files: NodeFiles, obj: PrivateObjectRow) -> Path:
    path = Path(obj.path)
    return path if path.is_absolute() else files.root / path


def publish_object(
    db: Database,
    files: NodeFiles,
    *,
    user: UserRow,
    object_id: str,
    sigma: float | None = None,
    epsilon: float | None = None,
) -> ReleaseRow:
    """Release a private object with Gaussian noise; give `sigma` or a target `epsilon`.

    `epsilon` picks the smallest sigma whose Gaussian costs at most `epsilon` at the
    node's delta. The charge is that Gaussian plus the unpaid cart of the model that
    computed the object.
    """
    _check_noise(sigma, epsilon)
    with db.session() as session:
        delta = get_node(session).delta
    if sigma is None:  # calibrated before the write lock: it takes milliseconds
        sigma = calibrate_sigma(float(epsilon), lambda s: gaussian(s).epsilon(delta))
    sigma = float(sigma)
    with db.write_session() as session:
        obj = session.scalars(
            select(PrivateObjectRow).where(
                PrivateObjectRow.id == object_id, PrivateObjectRow.owner_id == user.id
            )
        ).first()
        if obj is None:
            raise NotFound(f"No private object {object_id!r} among yours.", object_id=object_id)
        if obj.sensitivity is None:
            raise ValidationError(
                f"The node knows no sensitivity bound for this {obj.kind} object, so it cannot "
                "be released with the Gaussian mechanism. Expected: an object with a declared "
                "L2 sensitivity (e.g. a clipped loss).",
                object_id=object_id,
                kind=obj.kind,
            )
        model = _owned_model(session, user=user, model_id=obj.model_id)
        value = np.load(_object_path(files, obj), allow_pickle=False).astype(np.float64)
        std = sigma * obj.sensitivity
        rng = np.random.default_rng(secrets.randbits(128))
        noised = value + rng.normal(0.0, std, size=value.shape)
        model_unpaid = _unpaid(model)
        release = ledger.charge(
            session,
            user=user,
            curve_added=model_unpaid + gaussian(sigma),
            delta=delta,
            kind=KIND_OBJECT,
            mechanism="gaussian",
            params={
                "sigma": sigma,
                "std": std,
                "sensitivity": obj.sensitivity,
                "n_rows": obj.n_rows,
                "object_kind": obj.kind,
                "target_epsilon": epsilon,
                "model_version": model.version,
                "model_epsilon": model_unpaid.epsilon(delta),
            },
            model_id=model.id,
            object_id=obj.id,
            result={
                "value": noised.tolist(),
                "shape": list(value.shape),
                "sigma": sigma,
                "std": std,
                "object_kind": obj.kind,
            },
        )
        model.charged_curve = list(model.cart_curve)
        session.commit()
    return release


def list_releases(session: Session, *, user: UserRow) -> list[ReleaseRow]:
    """The releases of `user`, oldest first."""
    query = (
        select(ReleaseRow)
        .where(ReleaseRow.user_id == user.id)
        .order_by(ReleaseRow.created_at, ReleaseRow.id)
    )
    return list(session.scalars(query))


def get_release(session: Session, *, user: UserRow, release_id: str) -> ReleaseRow:
    """A release of `user`, or any release for the admin; others answer NotFound."""
    release = session.get(ReleaseRow, release_id)
    if release is None or (release.user_id != user.id and user.role != ROLE_ADMIN):
        raise NotFound(f"No release {release_id!r} among yours.", release_id=release_id)
    return release


def release_payload(
    session: Session, files: NodeFiles, *, user: UserRow, release_id: str
) -> ReleasePayload:
    """What `GET /releases/{id}/result` hands out: the weights file or the JSON result."""
    release = get_release(session, user=user, release_id=release_id)
    if release.result_path is None:
        return ReleasePayload(release=release, path=None, result=release.result)
    path = files.root / release.result_path
    if not path.is_file():
        raise NotFound(
            f"The file of release {release_id!r} is missing from the node's data directory.",
            release_id=release_id,
        )
    return ReleasePayload(release=release, path=path, result=None)


def _releases_dir(files: NodeFiles) -> Path:
    return files.release("-", _WEIGHTS_SUFFIX).parent


def sweep_orphans(db: Database, files: NodeFiles, *, grace_s: float = 60.0) -> list[Path]:
    """Delete release files no release row points to (left by a crash before commit).

    Run at start. Files changed in the last `grace_s` seconds are kept, so that another
    process serving the same data directory may finish a publish it has begun.
    """
    folder = _releases_dir(files)
    if not folder.is_dir():
        return []
    cutoff = time.time() - grace_s
    candidates = [p for p in folder.iterdir() if p.is_file() and p.stat().st_ctime <= cutoff]
    if not candidates:
        return []
    names = {_relative(files, p): p for p in candidates}
    known: set[str] = set()
    with db.session() as session:
        chunk = sorted(names)
        for start in range(0, len(chunk), 500):
            query = select(ReleaseRow.result_path).where(
                ReleaseRow.result_path.in_(chunk[start : start + 500])
            )
            known.update(p for p in session.scalars(query) if p is not None)
    removed = [path for name, path in sorted(names.items()) if name not in known]
    for path in removed:
        path.unlink(missing_ok=True)
    return removed
