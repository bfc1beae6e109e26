"""The array store: `.npy` files under the node's `arrays_dir`, memory-mapped for reading.

```
arrays_dir/
  datasets/<dataset_id>/<asset_id>.npy        the private array
  datasets/<dataset_id>/<asset_id>.mock.npy   its public mock
  datasets/<dataset_id>/subjects.npy          each row's data subject (0..S-1), if declared
  staging/<upload_id>/manifest.json, <i>.data.npy, <i>.mock.npy, *.part
  staging/<uuid>.part                         a single file being written atomically
```

Every file appears under its final name only complete: it is written to a `.part` file
in `staging/`, fsynced and renamed (same file system, so the rename is atomic). A crash
therefore leaves only staging debris, which is swept once it is stale.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

from veil._exceptions import NotFound
from veil.server.storage.npy import header_bytes

__all__ = ["STALE_AFTER_SECONDS", "ArrayStore", "AtomicFile"]

# An upload untouched this long is abandoned; a slow 2 GB upload still touches its
# part file with every chunk, so it never looks stale while it runs.
STALE_AFTER_SECONDS = 6 * 3600
_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_CHUNK = 8 * 1024**2
_OPEN_MAPS = 64  # memory maps kept open (two per dataset a step uses, and its subjects)


class AtomicFile:
    """A file written under a temporary name and renamed into place only when complete."""

    def __init__(self, part_path: Path) -> None:
        self.part_path = part_path
        self._file: IO[bytes] | None = open(part_path, "xb")  # noqa: SIM115 - closed in commit/discard

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert self._file is not None, "write after commit or discard"
        self._file.write(data)

    def commit(self, final_path: Path) -> None:
        assert self._file is not None, "commit after commit or discard"
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._file = None
        final_path.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self.part_path, final_path)
        _fsync_dir(final_path.parent)

    def discard(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self.part_path.unlink(missing_ok=True)


class ArrayStore:
    """Paths, atomic writes and memory-mapped reads of the node's arrays."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._open: OrderedDict[Path, np.ndarray] = OrderedDict()
        self._guard = threading.Lock()
        self.datasets_dir = root / "datasets"
        self.staging_dir = root / "staging"
        self.datasets_dir.mkdir(parents=True, exist_ok=True)
        self.staging_dir.mkdir(parents=True, exist_ok=True)
        self.sweep_staging()

    # -- reading ---------------------------------------------------------------------
    def asset_path(self, dataset_id: str, asset_id: str) -> Path:
        return self.datasets_dir / _checked(dataset_id) / f"{_checked(asset_id)}.npy"

    def mock_path(self, dataset_id: str, asset_id: str) -> Path:
        return self.datasets_dir / _checked(dataset_id) / f"{_checked(asset_id)}.mock.npy"

    def subjects_path(self, dataset_id: str) -> Path:
        """Each row's data subject, as its rank among the dataset's subject ids: private."""
        return self.datasets_dir / _checked(dataset_id) / "subjects.npy"

    def open(self, path: Path) -> np.ndarray:
        """The array memory-mapped read-only; never unpickles.

        A dataset's file is kept open for the next request (a flow III step opens the
        same two assets each time): a file under its final name never changes, and
        `remove_dataset` forgets the dataset's maps. Callers still look the asset up in
        the database first, so a map kept here is never a way to read a dataset that was
        deleted. Anything else (an upload's staged parts) is opened afresh.
        """
        if self.datasets_dir not in path.parents:
            return np.load(path, mmap_mode="r", allow_pickle=False)
        with self._guard:
            array = self._open.get(path)
            if array is not None:
                self._open.move_to_end(path)
                return array
        array = np.load(path, mmap_mode="r", allow_pickle=False)
        with self._guard:
            self._open[path] = array
            while len(self._open) > _OPEN_MAPS:
                self._open.popitem(last=False)
        return array

    def load(self, path: Path) -> np.ndarray:
        """A small array (a mock) read into memory; never unpickles."""
        return np.load(path, allow_pickle=False)

    # -- writing ---------------------------------------------------------------------
    def atomic_file(self, directory: Path | None = None) -> AtomicFile:
        """A new part file in `directory` (default: staging), on the store's file system."""
        return AtomicFile((directory or self.staging_dir) / f"{uuid.uuid4()}.part")

    def save(self, path: Path, array: np.ndarray) -> None:
        """Write `array` as .npy at `path` atomically, a chunk at a time."""
        array = np.asarray(array)
        out = self.atomic_file()
        try:
            for chunk in _npy_chunks(array):
                out.write(chunk)
            out.commit(path)
        except BaseException:
            out.discard()
            raise

    def write_json(self, path: Path, data: dict[str, Any]) -> None:
        out = self.atomic_file(path.parent)
        try:
            out.write(json.dumps(data).encode())
            out.commit(path)
        except BaseException:
            out.discard()
            raise

    # -- uploads ---------------------------------------------------------------------
    def upload_dir(self, upload_id: str) -> Path:
        """The staging folder of an upload; NotFound for ids that cannot be ours."""
        if not _ID.match(upload_id):
            raise NotFound(f"No upload {upload_id!r}.", upload=upload_id)
        return self.staging_dir / upload_id

    def claim_upload(self, upload_id: str) -> Path:
        """Move an upload aside for commit, so that exactly one commit can have it."""
        source = self.upload_dir(upload_id)
        claimed = self.staging_dir / f"{upload_id}.commit"
        try:
            os.rename(source, claimed)
        except FileNotFoundError:
            raise NotFound(
                f"No upload {upload_id!r}: it was committed, aborted after an error, or expired.",
                upload=upload_id,
            ) from None
        return claimed

    def install(self, dataset_id: str, moves: Iterable[tuple[Path, Path]]) -> None:
        """Rename staged files to their final places under the dataset's folder."""
        target = self.datasets_dir / _checked(dataset_id)
        target.mkdir(parents=True, exist_ok=False)
        for source, final in moves:
            os.replace(source, final)
        _fsync_dir(target)

    def remove(self, path: Path) -> None:
        shutil.rmtree(path, ignore_errors=True)

    def remove_dataset(self, dataset_id: str) -> None:
        folder = self.datasets_dir / _checked(dataset_id)
        with self._guard:
            for path in [p for p in self._open if p.parent == folder]:
                del self._open[path]
        self.remove(folder)

    def dataset_ids(self) -> list[str]:
        return [p.name for p in self.datasets_dir.iterdir() if p.is_dir() and _ID.match(p.name)]

    def is_stale(self, path: Path, *, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        return now - _last_touched(path) > STALE_AFTER_SECONDS

    def sweep_staging(self) -> None:
        """Remove uploads and part files that nobody has touched for a long time."""
        now = time.time()
        for entry in list(self.staging_dir.iterdir()):
            with contextlib.suppress(FileNotFoundError):
                if self.is_stale(entry, now=now):
                    if entry.is_dir():
                        shutil.rmtree(entry, ignore_errors=True)
                    else:
                        entry.unlink(missing_ok=True)


def _npy_chunks(array: np.ndarray) -> Iterator[bytes]:
    yield header_bytes(array.dtype, array.shape)
    if array.ndim == 0 or array.shape[0] == 0:
        yield np.ascontiguousarray(array).tobytes()
        return
    row_bytes = max(1, array[0].nbytes)
    per_chunk = max(1, _CHUNK // row_bytes)
    for first in range(0, array.shape[0], per_chunk):
        yield np.ascontiguousarray(array[first : first + per_chunk]).tobytes()


def _checked(object_id: str) -> str:
    # Ids become file names: anything but a uuid could climb out of the store.
    if not _ID.match(object_id):
        raise NotFound(f"No object {object_id!r}.")
    return object_id


def _last_touched(path: Path) -> float:
    newest = path.stat().st_mtime
    if path.is_dir():
        for child in path.iterdir():
            with contextlib.suppress(FileNotFoundError):
                newest = max(newest, child.stat().st_mtime)
    return newest


def _fsync_dir(path: Path) -> None:
    # Makes the rename itself durable; some platforms cannot open folders, that is fine.
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
