"""Upload memory: does a large asset pass without the node or the client holding it?

Writes a float32 `.npy` file of `--gib` GiB in a temp dir (a chunk at a time, so this
script never holds it), starts a node in a subprocess (`python -m veil.cli serve`, its
own data dir, SQLite, the default admin), and uploads the file by path through
`veil.login(...).datasets.upload(...)` in a second subprocess. Each process's peak
resident memory is its `VmHWM` in /proc; the node's is read before it stops, the
client reports its own after the upload returns.

Prints a table, writes ``benchmarks/results/upload_memory.json`` and says whether
each peak stays under half the asset's size. The temp dir needs twice the asset's
size on disk (the file and the node's copy); set TMPDIR to put it elsewhere.

    python benchmarks/upload_memory.py [--gib 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from _serve import ADMIN, free_port, node_env, proc_status, start_node, stop_node
from _sizes import machine, size_flags

RESULTS = Path(__file__).resolve().parent / "results" / "upload_memory.json"
ROW_FLOATS = 1024
CHUNK_BYTES = 64 * 1024**2
WELL_BELOW = 0.5
MIB = 1024**2

# Runs in its own interpreter, so its memory is the client's and nothing else's.
CLIENT = """
import json, sys, time
import veil

def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024

url, path, email, password = sys.argv[1:5]
client = veil.login(email, password, url=url, verbose=False)
rss_before = status("VmRSS")
started = time.perf_counter()
dataset = client.datasets.upload(name="upload-memory", assets={"x": path}, bounds={"x": (0, 1)})
seconds = time.perf_counter() - started
print(json.dumps({
    "seconds": seconds,
    "shape": list(dataset["x"].public_shape),
    "rss_before": rss_before,
    "peak": status("VmHWM"),
}))
"""


def _write_npy(path: Path, gib: float) -> tuple[tuple[int, int], int]:
    """A C-order float32 .npy of about `gib` GiB in [0, 1), written a chunk at a time."""
    rows = max(1, int(gib * 1024**3) // (ROW_FLOATS * 4))
    shape = (rows, ROW_FLOATS)
    rng = np.random.default_rng(0)
    per_chunk = max(1, CHUNK_BYTES // (ROW_FLOATS * 4))
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": "<f4", "fortran_order": False, "shape": shape}
        )
        for first in range(0, rows, per_chunk):
            n = min(per_chunk, rows - first)
            f.write(rng.random((n, ROW_FLOATS), dtype=np.float32).tobytes())
    # The file must map back as the array it claims to be.
    mapped = np.load(path, mmap_mode="r")
    assert mapped.shape == shape and mapped.dtype == np.float32, (mapped.shape, mapped.dtype)
    del mapped
    return shape, path.stat().st_size


def _upload(url: str, path: Path) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", CLIENT, url, str(path), *ADMIN],
        env=node_env(),
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the client failed ({done.returncode}):\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(gib: float) -> dict[str, object]:
    work = Path(tempfile.mkdtemp(prefix="veil-upload-memory-"))
    node: subprocess.Popen[bytes] | None = None
    try:
        path = work / "x.npy"
        shape, size = _write_npy(path, gib)
        port = free_port()
        node = start_node(work / "node", port, work / "node.log")
        node_before = proc_status(node.pid, "VmRSS")
        node_start_peak = proc_status(node.pid, "VmHWM")
        client = _upload(f"http://127.0.0.1:{port}", path)
        node_peak = proc_status(node.pid, "VmHWM")
        if client["shape"] != list(shape):
            raise RuntimeError(f"uploaded shape {client['shape']}, expected {list(shape)}")
    finally:
        if node is not None:
            stop_node(node)
        shutil.rmtree(work, ignore_errors=True)
    seconds = float(client["seconds"])  # type: ignore[arg-type]
    client_peak = int(client["peak"])  # type: ignore[call-overload]
    return {
        "asset_bytes": size,
        "shape": list(shape),
        "upload_s": seconds,
        "mb_per_s": size / 1e6 / seconds,
        "node": {
            "rss_before_bytes": node_before,
            "peak_at_start_bytes": node_start_peak,
            "peak_bytes": node_peak,
            "peak_over_asset": node_peak / size,
            "well_below": node_peak < WELL_BELOW * size,
        },
        "client": {
            "rss_before_bytes": client["rss_before"],
            "peak_bytes": client_peak,
            "peak_over_asset": client_peak / size,
            "well_below": client_peak < WELL_BELOW * size,
        },
    }


def _table(row: dict[str, object]) -> str:
    node, client = row["node"], row["client"]
    assert isinstance(node, dict) and isinstance(client, dict)
    head = (
        f"{'size GiB':>9} {'upload s':>9} {'MB/s':>8} {'node peak MiB':>14} "
        f"{'client peak MiB':>16} {'node/size':>10} {'client/size':>12}"
    )
    line = (
        f"{row['asset_bytes'] / 1024**3:>9.2f} {row['upload_s']:>9.1f} {row['mb_per_s']:>8.0f} "
        f"{node['peak_bytes'] / MIB:>14.0f} {client['peak_bytes'] / MIB:>16.0f} "
        f"{node['peak_over_asset']:>10.3f} {client['peak_over_asset']:>12.3f}"
    )
    before = (
        f"(before the upload: node RSS {node['rss_before_bytes'] / MIB:.0f} MiB, peak so far "
        f"{node['peak_at_start_bytes'] / MIB:.0f} MiB; client RSS "
        f"{client['rss_before_bytes'] / MIB:.0f} MiB)"
    )
    return "\n".join([head, line, before])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=2.0, help="asset size in GiB (float32)")
    size_flags(parser, RESULTS, quick="a 0.5 GiB asset", tiny="a 10 MiB asset")
    args = parser.parse_args()
    if args.tiny:
        args.gib = 0.01
    elif args.quick:
        args.gib = 0.5
    if args.gib <= 0:
        parser.error(f"--gib must be positive. Received: {args.gib}")
    row = run(args.gib)
    print(_table(row))
    for who in ("node", "client"):
        part = row[who]
        assert isinstance(part, dict)
        verdict = "stays" if part["well_below"] else "does NOT stay"
        print(
            f"{who}: peak {part['peak_over_asset']:.3f} x the asset, {verdict} under {WELL_BELOW} x"
        )
    args.out.parent.mkdir(exist_ok=True)
    meta = {
        "gib": args.gib,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "well_below": WELL_BELOW,
    }
    args.out.write_text(
        json.dumps({"meta": meta, "machine": machine(), "rows": [row]}, indent=2) + "\n"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
