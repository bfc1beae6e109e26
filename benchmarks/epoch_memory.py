"""Epoch memory: the node's resident memory while it trains an IDC-size epoch (issue 9).

Issue 9 asks for the node's anonymous RSS during an epoch of an IDC-size dataset
(277,524 images of 3x50x50 uint8, 2.08 GB, binary labels) to stay at or under 1.5 GB
(decimal), and not to grow from one fit to the next.

Writes such a dataset (random pixels, random labels) to a temp `.npy` a chunk at a time,
starts a node in a subprocess (`python -m veil.cli serve`, its own data dir, SQLite, the
default admin), uploads it by path, and has a data scientist fit the IDC CNN of
`benchmarks/training.py` (Rescaling, Conv16-Pool-Conv32-Pool-Dense(1), BCE, SGD, batch
256, sigma 1, clip 1) for one epoch with `validation_split=0.1`, then fit the same model
for one more epoch. A thread samples the node's `RssAnon` (its heap: what training
itself holds) and `RssFile` (file pages mapped into it: the memory-mapped dataset, which
the kernel can drop at will) from /proc/<pid>/status every 0.2 s, through the upload and
both fits. Each phase reports its peak and mean; each fit, its examples per second (the
training rows over the wall time from the request to the job's `done`, validation
included) and the anonymous RSS once it is done.

Prints a table, writes ``benchmarks/results/epoch_memory.json`` and says whether the
anonymous peak stays under the target and whether the second fit grew the node. The
temp dir needs twice the dataset's size on disk (the file and the node's copy); set
TMPDIR to put it elsewhere. At full size the two epochs take several minutes.

    python benchmarks/epoch_memory.py [--quick | --tiny] [--rows N] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from _serve import ADMIN, free_port, node_env, proc_status, start_node, stop_node
from _sizes import machine, size_flags

import veil
from veil import nn

RESULTS = Path(__file__).resolve().parent / "results" / "epoch_memory.json"
DS = ("memory@lab.org", "memory-password")
IDC_ROWS = 277_524
SHAPE = (3, 50, 50)
BATCH = 256
SIGMA, CLIP, LR = 1.0, 1.0, 0.05
VALIDATION_SPLIT = 0.1
TARGET_ANON = 1.5e9  # issue 9: bytes of anonymous RSS during the epoch
GROWTH_TOLERANCE = 32e6  # bytes: allocator noise, not a leak of anything epoch-sized
SAMPLE_S = 0.2
POLL_S = 1.0  # progress polls cost the node's CPU: fewer than the samples
CHUNK_ROWS = 8192
MB = 1e6


@dataclass
class Sampler:
    """RssAnon and RssFile of one process, every `SAMPLE_S` seconds, on a thread."""

    pid: int
    samples: list[tuple[float, int, int]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def sample(self) -> tuple[float, int, int]:
        row = (
            time.monotonic(),
            proc_status(self.pid, "RssAnon"),
            proc_status(self.pid, "RssFile"),
        )
        self.samples.append(row)
        return row

    def mark(self) -> float:
        """A sample now, and its time: a phase's bounds are samples of it, however short."""
        return self.sample()[0]

    def start(self) -> None:
        def loop() -> None:
            while not self._stop.wait(SAMPLE_S):
                self.sample()

        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def phase(self, since: float, until: float) -> dict[str, float | int]:
        """Peak and mean of the samples taken in [since, until]."""
        rows = [(a, f) for t, a, f in self.samples if since <= t <= until]
        if not rows:
            raise RuntimeError("no samples in this phase")
        anon, files = np.array(rows, dtype=np.float64).T
        return {
            "anon_peak_bytes": int(anon.max()),
            "anon_mean_bytes": float(anon.mean()),
            "file_peak_bytes": int(files.max()),
            "file_mean_bytes": float(files.mean()),
            "total_peak_bytes": int((anon + files).max()),
            "samples": len(rows),
        }


def _write_dataset(directory: Path, rows: int) -> tuple[Path, np.ndarray]:
    """An IDC-shaped uint8 .npy of `rows` images, written a chunk at a time, and its
    binary labels (small: they travel as an array)."""
    path = directory / "x.npy"
    rng = np.random.default_rng(0)
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": "|u1", "fortran_order": False, "shape": (rows, *SHAPE)}
        )
        for first in range(0, rows, CHUNK_ROWS):
            n = min(CHUNK_ROWS, rows - first)
            f.write(rng.integers(0, 256, size=(n, *SHAPE), dtype=np.uint8).tobytes())
    mapped = np.load(path, mmap_mode="r")
    assert mapped.shape == (rows, *SHAPE) and mapped.dtype == np.uint8, mapped.shape
    del mapped
    return path, rng.integers(0, 2, size=rows, dtype=np.uint8)


def _idc_cnn() -> nn.Model:
    """The IDC CNN of `benchmarks/training.py`."""
    model = nn.Model()
    model.add(nn.Rescaling(1 / 255, input_shape=(None, *SHAPE)))
    for filters in (16, 32):
        model.add(nn.Convolution(filters, 3, activation="relu"))
        model.add(nn.MaxPool(2))
    model.add(nn.Flatten())
    model.add(nn.Dense(1))
    model.add(nn.Sigmoid())
    return model


def _fit(model_ptr: veil.ModelPointer, data: veil.Dataset, batch: int) -> dict[str, object]:
    """One epoch; the job's end as the node reports it."""
    model_ptr.fit(
        data["x"],
        data["y"],
        max_iter=1,
        batch_size=batch,
        validation_split=VALIDATION_SPLIT,
        wait=False,
    )
    while (state := model_ptr.progress())["status"] not in ("done", "failed", "cancelled"):
        time.sleep(POLL_S)
    if state["status"] != "done":
        raise RuntimeError(f"the node's fit ended {state['status']}: {state.get('error')}")
    return state


def run(rows: int, batch: int, threads: int) -> dict[str, object]:
    work = Path(tempfile.mkdtemp(prefix="veil-epoch-memory-"))
    node = None
    sampler = None
    try:
        path, labels = _write_dataset(work, rows)
        size = path.stat().st_size
        port = free_port()
        env = node_env() | {"OMP_NUM_THREADS": str(threads), "VEIL_TORCH_THREADS": str(threads)}
        node = start_node(work / "node", port, work / "node.log", env=env)
        sampler = Sampler(node.pid)
        _, idle_anon, idle_file = sampler.sample()
        sampler.start()
        admin = veil.login(*ADMIN, port=port, verbose=False)
        upload_start = sampler.mark()
        admin.datasets.upload(
            name="idc-memory",
            assets={"x": str(path), "y": labels},
            bounds={"y": (0, 1)},
        )
        upload_end = sampler.mark()
        admin.users.create(email=DS[0], password=DS[1], name="Memory", budget=1e9)
        ds = veil.login(*DS, port=port, verbose=False)
        data = ds.datasets["idc-memory"]
        model_ptr = _idc_cnn().compile(
            to=ds,
            loss=nn.BinaryCrossEntropy(),
            optimizer=nn.SGD(LR),
            noise_multiplier=SIGMA,
            max_grad_norm=CLIP,
        )
        train_rows = rows - int(np.floor(rows * VALIDATION_SPLIT))
        fits = []
        for _ in range(2):
            started = sampler.mark()
            state = _fit(model_ptr, data, batch)
            ended, after_anon, after_file = sampler.sample()
            seconds = ended - started
            fits.append(
                {
                    "seconds": seconds,
                    "steps": state.get("step"),
                    "examples_per_second": train_rows / seconds,
                    "anon_after_bytes": after_anon,
                    "file_after_bytes": after_file,
                    **sampler.phase(started, ended),
                }
            )
        upload = {
            "seconds": upload_end - upload_start,
            **sampler.phase(upload_start, upload_end),
        }
    finally:
        if sampler is not None:
            sampler.stop()
        if node is not None:
            stop_node(node)
        shutil.rmtree(work, ignore_errors=True)
    first, second = fits
    growth = {
        "anon_peak_bytes": second["anon_peak_bytes"] - first["anon_peak_bytes"],
        "anon_after_bytes": second["anon_after_bytes"] - first["anon_after_bytes"],
    }
    return {
        "rows": rows,
        "train_rows": train_rows,
        "asset_bytes": size,
        "batch": batch,
        "idle": {"anon_bytes": idle_anon, "file_bytes": idle_file},
        "upload": upload,
        "fits": fits,
        "growth": growth,
        "anon_peak_under_target": max(f["anon_peak_bytes"] for f in fits) <= TARGET_ANON,
        "no_growth": max(growth.values()) <= GROWTH_TOLERANCE,
    }


def _table(row: dict) -> str:
    head = (
        f"{'phase':<8} {'seconds':>8} {'ex/s':>7} {'anon peak MB':>13} {'anon mean MB':>13} "
        f"{'file peak MB':>13} {'file mean MB':>13} {'anon after MB':>14}"
    )
    lines = [head]
    phases = [("upload", row["upload"])] + [(f"fit {i}", f) for i, f in enumerate(row["fits"], 1)]
    for name, part in phases:
        rate = f"{part['examples_per_second']:>7.0f}" if "examples_per_second" in part else " " * 7
        after = part.get("anon_after_bytes")
        lines.append(
            f"{name:<8} {part['seconds']:>8.1f} {rate} {part['anon_peak_bytes'] / MB:>13.0f} "
            f"{part['anon_mean_bytes'] / MB:>13.0f} {part['file_peak_bytes'] / MB:>13.0f} "
            f"{part['file_mean_bytes'] / MB:>13.0f} "
            + (f"{after / MB:>14.0f}" if after is not None else "")
        )
    idle = row["idle"]
    lines.append(
        f"({row['rows']:,} rows of {'x'.join(map(str, SHAPE))} uint8, "
        f"{row['asset_bytes'] / 1e9:.2f} GB; node before the upload: anon "
        f"{idle['anon_bytes'] / MB:.0f} MB, file {idle['file_bytes'] / MB:.0f} MB)"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=IDC_ROWS, help="images (IDC: 277,524)")
    parser.add_argument("--batch", type=int, default=BATCH, help="expected batch size")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="the node's torch intra-op threads (VEIL_TORCH_THREADS; 1, the default)",
    )
    size_flags(parser, RESULTS, quick="16,384 images (a 123 MB asset)", tiny="1,024 images")
    args = parser.parse_args()
    if args.tiny:
        args.rows, args.batch = 1024, 128
    elif args.quick:
        args.rows = 16_384
    if args.rows < 2 * args.batch or args.batch < 1:
        parser.error(f"--rows must be at least twice --batch. Received: {args.rows}, {args.batch}")
    row = run(args.rows, args.batch, args.threads)
    print(_table(row))
    peak = max(f["anon_peak_bytes"] for f in row["fits"])
    verdict = "within" if row["anon_peak_under_target"] else "ABOVE"
    print(f"anonymous RSS peak {peak / MB:.0f} MB: {verdict} the {TARGET_ANON / MB:.0f} MB target")
    growth = row["growth"]
    print(
        f"second fit against the first: anon peak {growth['anon_peak_bytes'] / MB:+.0f} MB, "
        f"anon after {growth['anon_after_bytes'] / MB:+.0f} MB "
        f"({'no growth' if row['no_growth'] else 'GROWS'}, "
        f"tolerance {GROWTH_TOLERANCE / MB:.0f} MB)"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "rows": args.rows,
        "batch": args.batch,
        "threads": args.threads,
        "validation_split": VALIDATION_SPLIT,
        "sample_s": SAMPLE_S,
        "target_anon_bytes": TARGET_ANON,
        "growth_tolerance_bytes": GROWTH_TOLERANCE,
    }
    args.out.write_text(
        json.dumps({"meta": meta, "machine": machine(), "rows": [row]}, indent=2) + "\n"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
