"""The upload protocol by hand: refusals, interruptions, streaming, and never a 500."""

from __future__ import annotations

import hashlib
import io
import os
import socket
import time

import numpy as np
import pytest
import starlette.requests

import veil
from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD, login
from tests.nodes import running_node
from tests.server.test_datasets import files_under, npy_bytes, raw_http
from veil.client import _datasets
from veil.server.storage.staging import CheckedNpyFile

DECL = {"name": "x", "dtype": "<f8", "shape": [4], "bounds": [0, 1]}


def start_upload(http, *, name: str = "Raw", assets: list | None = None) -> str:
    answer = http.post("/datasets/uploads", json={"name": name, "assets": assets or [DECL]})
    assert answer.status_code == 201, answer.text
    return answer.json()["id"]


def put(http, upload_id: str, body: bytes, *, sha: str | None = None, part: str = "data"):
    sha = sha or hashlib.sha256(body).hexdigest()
    return http.put(
        f"/datasets/uploads/{upload_id}/x/{part}", content=body, headers={"X-Veil-SHA256": sha}
    )


def object_npy() -> bytes:
    """A .npy whose header declares dtype object ('|O'), followed by pickle-like bytes."""
    out = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        out, {"descr": "|O", "fortran_order": False, "shape": (4,)}
    )
    return out.getvalue() + b"\x80\x04\x95" + b"\x00" * 29


BAD_BODIES = {
    "object dtype": (object_npy(), "object"),
    "pickle": (b"\x80\x04\x95\x05\x00\x00\x00\x00\x00\x00\x00K\x01.", "pickles"),
    "other shape": (npy_bytes(np.zeros(5)), "shape"),
    "other dtype": (npy_bytes(np.zeros(4, np.float32)), "dtype"),
    "truncated": (npy_bytes(np.zeros(4))[:-8], "ended early"),
    "too long": (npy_bytes(np.zeros(4)) + b"\x00", "more arrived"),
}


def test_bad_npy_bytes_are_refused_and_discard_the_upload(sqlite_node) -> None:
    admin = login(sqlite_node, ADMIN_EMAIL, ADMIN_PASSWORD)
    with raw_http(sqlite_node, admin) as http:
        for case, (body, message) in BAD_BODIES.items():
            upload_id = start_upload(http)
            answer = put(http, upload_id, body)
            assert answer.status_code == 422, case
            assert answer.json()["error"] == "ValidationError", case
            assert message in answer.json()["message"], (case, answer.json())
            assert http.post(f"/datasets/uploads/{upload_id}/commit").status_code == 404, case
    assert files_under(sqlite_node) == [] and len(admin.datasets) == 0


def test_checksum_mismatch_is_refused(node, admin) -> None:
    with raw_http(node, admin) as http:
        upload_id = start_upload(http)
        answer = put(http, upload_id, npy_bytes(np.zeros(4)), sha="0" * 64)
        assert answer.status_code == 422 and "checksum mismatch" in answer.json()["message"]
    assert files_under(node) == [] and len(admin.datasets) == 0


def test_declarations_are_checked_before_any_bytes(node, admin) -> None:
    bad = [
        ({"name": "x", "dtype": "|O", "shape": [4]}, "object"),
        ({"name": "x", "dtype": "i4,O", "shape": [4]}, "structured"),
        ({"name": "x", "dtype": ">f4", "shape": [4], "bounds": [0, 1]}, "little-endian"),
        ({"name": "x", "dtype": "complex64", "shape": [4]}, "bool, an integer or a float"),
        ({"name": "x", "dtype": "<f8", "shape": [0, 3], "bounds": [0, 1]}, "positive ints"),
        ({"name": "x", "dtype": "<f8", "shape": [], "bounds": [0, 1]}, "positive ints"),
        ({"name": "1x", "dtype": "|u1", "shape": [4]}, "identifier"),
        ({"name": "x", "dtype": "<f8", "shape": [4], "bounds": [1, 0]}, "low <= high"),
    ]
    with raw_http(node, admin) as http:
        for decl, message in bad:
            answer = http.post("/datasets/uploads", json={"name": "D", "assets": [decl]})
            assert answer.status_code == 422, decl
            assert message in answer.json()["message"], answer.json()
        assert (
            http.post("/datasets/uploads", json={"name": "../x", "assets": [DECL]}).status_code
            == 422
        )
        twice = {"name": "D", "assets": [DECL, DECL]}
        assert "unique" in http.post("/datasets/uploads", json=twice).json()["message"]
    assert files_under(node) == []


def test_size_limit(tmp_path) -> None:
    with running_node(tmp_path / "n", max_upload_bytes=1000) as n:
        admin = login(n, ADMIN_EMAIL, ADMIN_PASSWORD)
        with pytest.raises(veil.ValidationError, match="at most 1000 bytes"):
            admin.datasets.upload(name="Big", assets={"x": np.zeros((10, 200), np.uint8)})
        assert files_under(n) == []


def test_interrupted_upload_leaves_nothing(node, admin) -> None:
    body = npy_bytes(np.zeros(1_000_000))
    with raw_http(node, admin) as http:
        upload_id = start_upload(http, assets=[dict(DECL, shape=[1_000_000])])
    request = (
        f"PUT /api/v1/datasets/uploads/{upload_id}/x/data HTTP/1.1\r\n"
        f"Host: 127.0.0.1\r\nAuthorization: Bearer {admin._http.token}\r\n"
        f"X-Veil-SHA256: {hashlib.sha256(body).hexdigest()}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    staging = node.settings.arrays_dir / "staging" / upload_id
    with socket.create_connection(("127.0.0.1", node.port)) as sock:
        sock.sendall(request + body[: len(body) // 2])
        _wait_for(lambda: any(p.suffix == ".part" and p.stat().st_size for p in staging.iterdir()))
    # The client died mid-stream: the node notices and discards the whole upload.
    _wait_for(lambda: files_under(node) == [])
    with raw_http(node, admin) as http:
        assert http.post(f"/datasets/uploads/{upload_id}/commit").status_code == 404
    assert len(admin.datasets) == 0


def test_client_side_failure_abandons_the_upload(node, admin, monkeypatch) -> None:
    def broken(self):  # noqa: ANN001, ANN202 - the array source dies after one chunk
        yield self.header
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(_datasets._ArraySource, "chunks", broken)
    monkeypatch.setattr(_datasets._ArraySource, "sha256", lambda self: "0" * 64)
    with pytest.raises((RuntimeError, veil.VeilError)):
        admin.datasets.upload(name="Broken", assets={"x": np.zeros((100, 10), np.uint8)})
    _wait_for(lambda: files_under(node) == [])
    assert len(admin.datasets) == 0


def test_stale_staging_is_swept_at_start(tmp_path) -> None:
    with running_node(tmp_path / "n") as n:
        admin = login(n, ADMIN_EMAIL, ADMIN_PASSWORD)
        with raw_http(n, admin) as http:
            stale, fresh = start_upload(http, name="Old"), start_upload(http, name="New")
        staging = n.settings.arrays_dir / "staging"
    old = time.time() - 7 * 3600
    for path in (staging / stale, staging / stale / "manifest.json"):
        os.utime(path, (old, old))
    with running_node(tmp_path / "n"):
        assert sorted(p.name for p in staging.iterdir()) == [fresh]


def test_assets_stream_through_the_node(sqlite_node, monkeypatch) -> None:
    """~20 MB go up in chunks: the node never reads a whole body, nor writes one at once."""
    original = starlette.requests.Request.body
    writes: list[int] = []
    write = CheckedNpyFile.write

    async def no_whole_bodies(self):  # noqa: ANN001, ANN202
        assert self.method != "PUT", "an upload must be streamed, not read whole"
        return await original(self)

    def counting_write(self, data):  # noqa: ANN001, ANN202
        writes.append(len(data))
        return write(self, data)

    monkeypatch.setattr(starlette.requests.Request, "body", no_whole_bodies)
    monkeypatch.setattr(CheckedNpyFile, "write", counting_write)
    array = np.random.default_rng(0).random((2_500, 1_000))  # 20 MB of float64
    chunks = [len(c) for c in _datasets._ArraySource(array).chunks()]
    assert len(chunks) > 2 and max(chunks) <= _datasets.CHUNK_BYTES
    admin = login(sqlite_node, ADMIN_EMAIL, ADMIN_PASSWORD)
    dataset = admin.datasets.upload(name="Big", assets={"x": array}, bounds={"x": (0, 1)})
    assert len(writes) > 10 and max(writes) < 4 * 1024**2
    np.testing.assert_array_equal(dataset["x"].get(), array)
    stored = sqlite_node.ctx.arrays.open(
        sqlite_node.ctx.arrays.asset_path(dataset.id, dataset["x"].id)
    )
    assert isinstance(stored, np.memmap) and stored.shape == array.shape


def test_malformed_input_never_answers_500(node, admin, ds) -> None:
    with raw_http(node, admin) as http:
        upload_id = start_upload(http)
        pointer = admin.datasets.upload(name="P", assets={"x": np.zeros(4, np.uint8)})["x"].id
        answers = [
            http.post("/datasets/uploads", content=b"{not json"),
            http.post("/datasets/uploads", json={"name": "D", "assets": "x"}),
            http.post("/datasets/uploads", json={"name": "D", "assets": [dict(DECL, shape=["a"])]}),
            http.post("/datasets/uploads", json={"name": "D", "assets": [dict(DECL, bounds=[0])]}),
            http.post(
                "/datasets/uploads", json={"name": "D", "assets": [dict(DECL, shape=[2**80])]}
            ),
            http.post("/datasets/uploads", json={"name": "D", "assets": [], "extra": 1}),
            put(http, "not-an-upload", b"x"),
            put(http, "..", b"x"),
            put(http, upload_id, b"x", sha="not-hex"),
            put(http, upload_id, b"x", part="other"),
            put(http, upload_id, b"x", part="mock"),
            http.put(f"/datasets/uploads/{upload_id}/x/data", content=b"x"),
            http.put(
                f"/datasets/uploads/{upload_id}/nope/data",
                content=b"x",
                headers={"X-Veil-SHA256": "0" * 64},
            ),
            http.post(f"/datasets/uploads/{upload_id}/commit"),
            http.post("/datasets/uploads/not-an-id/commit"),
            http.delete("/datasets/uploads/not-an-id"),
            http.get("/datasets/no-such-dataset"),
            http.get("/assets/no-such-pointer"),
            http.get("/assets/no-such-pointer/mock"),
            http.post(f"/assets/{pointer}/slice", json={"start": "1"}),
            http.post(f"/assets/{pointer}/slice", json={"start": True}),
            http.post(f"/assets/{pointer}/slice", json={"step": 0}),
            http.post(f"/assets/{pointer}/slice", json={"step": -1}),
            http.post(f"/assets/{pointer}/slice", json={"start": 1.5}),
        ]
        huge = http.post(f"/assets/{pointer}/slice", json={"stop": 2**200, "step": 2**100})
        assert huge.status_code == 201 and huge.json()["shape"] == [1]
    for answer in answers:
        assert 400 <= answer.status_code < 500, (answer.request.url, answer.text)
        assert answer.json()["error"] in {"ValidationError", "NotFound", "Conflict"}, answer.text


def _wait_for(condition, timeout: float = 15.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.02)


def test_a_dataset_may_name_its_data_subjects(node, admin, ds) -> None:
    x = np.zeros((10, 3), np.float32)
    person = np.array([7, 7, 7, 3, 3, 900, 900, 900, 900, 12])
    admin.datasets.upload(
        name="Visits",
        assets={"x": x, "person": person},
        bounds={"x": (0, 1), "person": (0, 1000)},
        subject="person",
    )
    visits = ds.datasets["Visits"]
    assert (visits.unit, visits.subjects, visits.subject_asset) == ("subject", 4, "person")
    assert "privacy unit: subject (4 in person)" in repr(visits)
    ranks = np.load(node.ctx.arrays.subjects_path(visits.id))
    np.testing.assert_array_equal(ranks, [1, 1, 1, 0, 0, 3, 3, 3, 3, 2])  # id order
    plain = admin.datasets.upload(name="Plain", assets={"x": x}, bounds={"x": (0, 1)})
    assert (plain.unit, plain.subjects, plain.subject_asset) == ("row", 10, None)
    for subject, assets, message in (
        ("nobody", {"x": x}, "Expected one of \\['x'\\]"),
        ("x", {"x": x}, "one integer id per row"),
        ("p", {"x": x, "p": person.reshape(5, 2)}, "same number of rows|one integer id"),
    ):
        with pytest.raises(veil.ValidationError, match=message):
            admin.datasets.upload(
                name="Bad", assets=assets, bounds={k: (0, 1000) for k in assets}, subject=subject
            )
    assert "Bad" not in admin.datasets.names()
