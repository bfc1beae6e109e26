"""A model's files outlive no row: a crash between a delete's commit and its files'
removal (or a compile's files before a commit that never came) leaves a folder that the
node's next start removes, while every model that has a row keeps its files."""

from __future__ import annotations

import os
import time
import uuid

import veil
from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD, login, make_ds
from tests.nodes import running_node
from veil import nn
from veil.server.db.tables.models import ModelRow
from veil.server.services.checkpoints import load_trainer


def _age(path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def _large_model(ds: veil.Client) -> veil.ModelPointer:
    """Over 4 MiB of weights: its checkpoint is files, not a row."""
    model = nn.Model()
    model.add(nn.Dense(1100, input_shape=(None, 1000)))
    model.add(nn.Dense(1, activation="sigmoid"))
    return model.compile(to=ds)


def test_the_next_start_removes_model_folders_no_row_names(tmp_path) -> None:
    data_dir = tmp_path / "node"
    with running_node(data_dir) as node:
        admin = login(node, ADMIN_EMAIL, ADMIN_PASSWORD)
        ds = make_ds(admin, node)
        model_ptr = _large_model(ds)
        kept = node.ctx.files.model_dir(model_ptr.id)
        weights = sorted(p.name for p in kept.iterdir())
        assert weights, "the large model's checkpoint should be files"
    models = kept.parent
    crashed, compiling = models / str(uuid.uuid4()), models / str(uuid.uuid4())
    for folder in (crashed, compiling):
        folder.mkdir()
        (folder / "weights-1.safetensors").write_bytes(b"left behind")
    _age(crashed, 3600)
    _age(kept, 3600)  # old too: only the rows decide

    with running_node(data_dir) as node:
        assert not crashed.exists()
        assert compiling.exists()  # changed a moment ago: another process may be at it
        assert sorted(p.name for p in kept.iterdir()) == weights
        with node.ctx.db.session() as session:  # the model still loads from its files
            row = session.get(ModelRow, model_ptr.id)
            trainer = load_trainer(session, node.ctx.files, row, device="cpu")
        assert trainer.spec.param_count == 1000 * 1100 + 1100 + 1100 + 1


def test_a_deleted_models_folder_goes_with_it(tmp_path) -> None:
    with running_node(tmp_path / "node") as node:
        admin = login(node, ADMIN_EMAIL, ADMIN_PASSWORD)
        model_ptr = _large_model(make_ds(admin, node))
        folder = node.ctx.files.model_dir(model_ptr.id)
        assert folder.is_dir()
        model_ptr.delete()
        assert not folder.exists()
