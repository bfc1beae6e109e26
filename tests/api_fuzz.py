"""Schemathesis against a running node: every operation of the OpenAPI document, with
generated valid and invalid input, checked with `--checks all` (no 500, every status
and body as documented, invalid input refused, authentication never ignored).

`fuzz(node, ...)` seeds a node with a dataset, a data scientist and a trained model,
then runs the `st` command line as that data scientist (or as the admin). The test
suite runs it with a few examples per operation (`tests/server/test_openapi.py`);
`python -m tests.api_fuzz` runs it at length on a node of its own.

`POST /auth/logout` is left out: it would end the session every later request uses.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD, login, make_ds
from tests.flows.data import upload_images
from tests.nodes import RunningNode, running_node
from veil import nn

__all__ = ["fuzz", "seed"]


def seed(node: RunningNode) -> dict[str, str]:
    """A dataset, a data scientist with a model it stepped once; tokens by role."""
    admin = login(node, ADMIN_EMAIL, ADMIN_PASSWORD)
    upload_images(admin, n=40)
    ds = make_ds(admin, node, budget=100.0)
    data = ds.datasets["Patches"]
    model = nn.Model()
    model.add(nn.Flatten(input_shape=(None, 1, 28, 28)))
    model.add(nn.Dense(1, activation="sigmoid"))
    model.compile(to=ds).step(data["train_images"][0:8], data["train_labels"][0:8])
    return {"admin": admin._http.token or "", "data_scientist": ds._http.token or ""}


def fuzz(
    node: RunningNode,
    *,
    token: str,
    max_examples: int,
    report: Path,
    seed_value: int = 8,
    phases: str = "examples,coverage,fuzzing",
) -> subprocess.CompletedProcess[str]:
    """Run `st run --checks all` against the node; its JUnit report goes to `report`."""
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "--config-file",
        str(Path(__file__).with_name("schemathesis.toml")),
        "run",
        f"{node.url}/openapi.json",
        "--checks",
        "all",
        "--header",
        f"Authorization: Bearer {token}",
        "--max-examples",
        str(max_examples),
        "--seed",
        str(seed_value),
        "--phases",
        phases,
        "--workers",
        "1",
        "--generation-database",
        "none",
        "--request-timeout",
        "60",
        # Logging out would end the session every later request uses.
        "--exclude-path",
        "/api/v1/auth/logout",
        "--generation-with-security-parameters",
        "false",
        "--no-color",
        "--report",
        "junit",
        "--report-junit-path",
        str(report),
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=3600)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-examples", type=int, default=200)
    parser.add_argument("--as", dest="role", choices=["data_scientist", "admin"], default=None)
    parser.add_argument("--report-dir", type=Path, default=Path("schemathesis-report"))
    args = parser.parse_args()
    args.report_dir.mkdir(parents=True, exist_ok=True)
    failed = False
    roles = [args.role] if args.role else ["data_scientist", "admin"]
    for role in roles:
        with tempfile.TemporaryDirectory() as tmp, running_node(Path(tmp) / "node") as node:
            token = seed(node)[role]
            report = args.report_dir / f"junit-{role}.xml"
            result = fuzz(node, token=token, max_examples=args.max_examples, report=report)
            print(result.stdout[-20000:])
            print(f"{role}: exit {result.returncode}, report {report}")
            failed = failed or result.returncode != 0
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
