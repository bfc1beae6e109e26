"""An upload in progress: its staging folder, the manifest in it and its part files.

The manifest is the checked declaration and its owner; a folder without one, or with
another owner's, is no upload at all to the caller.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from veil._exceptions import NotFound, ValidationError
from veil.server.db.tables.accounts import UserRow
from veil.server.services.upload_declarations import AssetDecl
from veil.server.storage.arrays import ArrayStore

__all__ = ["Manifest", "part_path", "read_manifest", "staged_part", "write_manifest"]


@dataclass(frozen=True)
class Manifest:
    upload_id: str
    owner_id: str
    name: str
    description: str
    assets: tuple[AssetDecl, ...]
    subject: str | None = None  # the asset naming each row's data subject

    def asset(self, name: str) -> tuple[int, AssetDecl]:
        for index, decl in enumerate(self.assets):
            if decl.name == name:
                return index, decl
        raise NotFound(
            f"Upload {self.upload_id} declares no asset {name!r}. "
            f"Declared: {[a.name for a in self.assets]}",
            asset=name,
        )


def write_manifest(arrays: ArrayStore, folder: Path, manifest: Manifest) -> None:
    arrays.write_json(
        folder / "manifest.json",
        {
            "upload_id": manifest.upload_id,
            "owner_id": manifest.owner_id,
            "name": manifest.name,
            "description": manifest.description,
            "created_at": datetime.now(UTC).isoformat(),
            "assets": [decl.to_json() for decl in manifest.assets],
            "subject": manifest.subject,
        },
    )


def read_manifest(folder: Path, *, user: UserRow, upload_id: str) -> Manifest:
    try:
        data = json.loads((folder / "manifest.json").read_text())
    except (FileNotFoundError, NotADirectoryError):
        data = None
    if data is None or data["owner_id"] != user.id:
        raise NotFound(
            f"No upload {upload_id!r}: it was committed, aborted after an error, or expired.",
            upload=upload_id,
        )
    return Manifest(
        upload_id=data["upload_id"],
        owner_id=data["owner_id"],
        name=data["name"],
        description=data["description"],
        assets=tuple(AssetDecl.from_json(a) for a in data["assets"]),
        subject=data.get("subject"),
    )


def part_path(folder: Path, index: int, part: str) -> Path:
    return folder / f"{index}.{part}.npy"


def staged_part(folder: Path, index: int, part: str, decl: AssetDecl) -> Path:
    """The part's file, which must have arrived whole."""
    path = part_path(folder, index, part)
    if not path.exists():
        raise ValidationError(
            f"Asset {decl.name!r} ({part}) has not been uploaded; send it before committing."
        )
    return path
