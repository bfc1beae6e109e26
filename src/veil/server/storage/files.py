"""Where the node keeps model weights, cart arrays, private results and released results.

All under the data directory; each writer writes to a temporary name and renames, so a
reader (or a restart after a crash) never sees half a file. A file is on disk (fsync)
before any database row points at it; several files written for one commit are synced
together (`sync_files`), since each fsync waits for a journal commit and concurrent
ones share it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

__all__ = ["NodeFiles", "atomic_write", "link_into", "sync_files"]

# fsync releases the GIL; a few threads let one request's files share a journal commit.
_SYNCERS = ThreadPoolExecutor(max_workers=8, thread_name_prefix="veil-fsync")


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def sync_files(paths: Sequence[Path]) -> None:
    """fsync every file in `paths`, concurrently; returns once all are on disk."""
    if len(paths) == 1:
        _fsync(paths[0])
        return
    for done in [_SYNCERS.submit(_fsync, path) for path in paths]:
        done.result()


def atomic_write(path: Path, write: Callable[[Path], None], *, sync: bool = True) -> Path:
    """Call `write(tmp)` then move tmp onto `path` (same folder, so the rename is atomic).

    With `sync=False` the caller owes a `sync_files([path])` (with its other files)
    before any row points at `path`.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        if sync:
            _fsync(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def link_into(source: Path, target: Path) -> Path:
    """Make `target` the same file as `source` (a hard link: checkpoints are never
    rewritten in place), replacing whatever `target` was; a copy where links fail."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.link")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError:  # no hard links on this file system, or another device
        return atomic_write(target, lambda out: shutil.copyfile(source, out))
    os.replace(tmp, target)
    return target


class NodeFiles:
    """Path layout of everything but the assets (those are the array store's)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def model_dir(self, model_id: str) -> Path:
        return self.root / "models" / model_id

    def weights(self, model_id: str, version: int) -> Path:
        """The weights of one checkpoint (safetensors: {name: tensor}); what publish copies."""
        return self.model_dir(model_id) / f"weights-{version}.safetensors"

    def optimizer(self, model_id: str, version: int) -> Path:
        """Optimizer and noise-generator state of one checkpoint (safetensors + metadata)."""
        return self.model_dir(model_id) / f"optimizer-{version}.safetensors"

    def cart_arrays(self, model_id: str, version: int) -> Path:
        """The cart's per-row arrays of one checkpoint (.npz of plain arrays, no pickle)."""
        return self.model_dir(model_id) / f"cart-{version}.npz"

    def release(self, release_id: str, suffix: str) -> Path:
        return self.root / "releases" / f"{release_id}{suffix}"
