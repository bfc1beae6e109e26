"""The dashboard's files ship with the package, and the vendored ones are what their
README says they are."""

from __future__ import annotations

import hashlib
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).parents[2]
PACKAGE = ROOT / "src" / "veil"
WEB = PACKAGE / "server" / "web"


def test_every_template_and_static_file_is_package_data() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["veil"]
    shipped = {path for pattern in patterns for path in PACKAGE.glob(pattern)}
    files = {p for folder in ("templates", "static") for p in (WEB / folder).rglob("*")}
    assert {p for p in files if p.is_file()} - shipped == set()


def test_vendored_files_match_the_checksums_in_their_readme() -> None:
    vendor = WEB / "static" / "vendor"
    readme = (vendor / "README.md").read_text()
    listed = {name: digest for digest, name in re.findall(r"^([0-9a-f]{64})  (\S+)$", readme, re.M)}
    served = {
        p.relative_to(vendor).as_posix()
        for p in vendor.rglob("*")
        if p.is_file() and p.suffix in (".js", ".css", ".png")
    }
    assert set(listed) == served
    for name, digest in listed.items():
        assert hashlib.sha256((vendor / name).read_bytes()).hexdigest() == digest, name
