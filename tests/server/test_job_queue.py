"""The job queue in the database: fair claims, leases, fencing, requeues, places in line."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import pytest

from tests.nodes import fresh_postgres_url
from veil.privacy import RdpCurve
from veil.server.db.engine import Database
from veil.server.db.tables.accounts import ROLE_DS, NodeRow, UserRow
from veil.server.db.tables.models import JobRow, ModelRow
from veil.server.services import fits, job_queue
from veil.server.services.job_queue import LeaseLost
from veil.server.services.node import bootstrap
from veil.server.settings import Settings


@contextlib.contextmanager
def _queue_db(backend: str, tmp_path) -> Iterator[Database]:
    with contextlib.ExitStack() as stack:
        if backend == "sqlite":
            url = f"sqlite:///{tmp_path / 'queue.db'}"
        else:
            url = stack.enter_context(fresh_postgres_url())
        database = Database(url)
        database.migrate()
        with database.session() as session:
            bootstrap(session, Settings(data_dir=tmp_path))
        yield database
        database.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db(request: pytest.FixtureRequest, tmp_path) -> Iterator[Database]:
    with _queue_db(request.param, tmp_path) as database:
        yield database


@pytest.fixture
def pg_db(tmp_path) -> Iterator[Database]:
    """PostgreSQL alone: its row locks let a cancel and a claim interleave."""
    with _queue_db("postgres", tmp_path) as database:
        yield database


def _user(db: Database, email: str) -> str:
    with db.session() as session:
        user = UserRow(email=email, name=email, role=ROLE_DS, password_hash="x", budget=1.0)
        session.add(user)
        session.commit()
        return user.id


def _job(db: Database, owner_id: str) -> str:
    """A queued fit of a new model of `owner_id` (created after every earlier one)."""
    zero = RdpCurve.zero().to_list()
    with db.session() as session:
        model = ModelRow(
            owner_id=owner_id, spec={}, cart_state={}, cart_curve=zero, charged_curve=zero
        )
        session.add(model)
        session.flush()
        job = JobRow(
            model_id=model.id,
            owner_id=owner_id,
            kind="fit",
            status="queued",
            params={},
            max_iter=1,
            steps=1,
        )
        session.add(job)
        session.flush()
        model.busy_job_id = job.id
        session.commit()
        time.sleep(0.002)  # distinct creation times: the queue is ordered by them
        return job.id


def _job_row(db: Database, job_id: str) -> JobRow:
    with db.session() as session:
        job = session.get(JobRow, job_id)
        assert job is not None
        return job


def test_one_user_never_holds_every_worker(db: Database) -> None:
    alice, bob = _user(db, "alice@lab.org"), _user(db, "bob@lab.org")
    a1, a2, b1 = _job(db, alice), _job(db, alice), _job(db, bob)
    first = job_queue.claim_next(db, worker="w1", lease_seconds=30)
    second = job_queue.claim_next(db, worker="w2", lease_seconds=30)
    assert first is not None and second is not None
    # alice may run one job at a time (the default): bob's later job goes before her second
    assert (first.job_id, second.job_id) == (a1, b1)
    assert job_queue.claim_next(db, worker="w3", lease_seconds=30) is None
    assert not job_queue.has_waiting(db)
    with db.session() as session:
        assert job_queue.queue_position(session, _job_row(db, a2)) == 1
        session.get(NodeRow, 1).max_running_jobs = 2
        session.commit()
    assert job_queue.has_waiting(db)
    third = job_queue.claim_next(db, worker="w3", lease_seconds=30)
    assert third is not None and third.job_id == a2


def test_a_lost_lease_is_requeued_and_its_old_holder_fenced_off(db: Database) -> None:
    alice = _user(db, "alice@lab.org")
    job_id = _job(db, alice)
    stale = job_queue.claim_next(db, worker="dead", lease_seconds=0.05)
    assert stale is not None and stale.attempt == 1
    assert job_queue.requeue_expired(db, max_starts=5) == []  # the lease still runs
    time.sleep(0.1)
    assert job_queue.requeue_expired(db, max_starts=5) == [job_id]
    assert _job_row(db, job_id).status == "queued"
    fresh = job_queue.claim_next(db, worker="alive", lease_seconds=30)
    assert fresh is not None and fresh.job_id == job_id and fresh.attempt == 2
    assert not job_queue.renew(db, stale, lease_seconds=30)  # the dead worker woke up: too late
    assert job_queue.renew(db, fresh, lease_seconds=30)
    with db.write_session() as session, pytest.raises(LeaseLost):
        job_queue.fenced_job(session, stale)
    with db.write_session() as session:
        assert job_queue.fenced_job(session, fresh).worker == "alive"


def test_a_job_that_keeps_losing_its_worker_fails_and_frees_its_model(db: Database) -> None:
    alice = _user(db, "alice@lab.org")
    job_id = _job(db, alice)
    for attempt in range(1, 3):
        claim = job_queue.claim_next(db, worker="doomed", lease_seconds=0.01)
        assert claim is not None and claim.attempt == attempt
        time.sleep(0.05)
        job_queue.requeue_expired(db, max_starts=2)
    job = _job_row(db, job_id)
    assert job.status == "failed" and "started 2 times" in job.error
    with db.session() as session:
        assert session.get(ModelRow, job.model_id).busy_job_id is None


def test_a_job_given_back_resumes_at_once(db: Database) -> None:
    alice = _user(db, "alice@lab.org")
    job_id = _job(db, alice)
    claim = job_queue.claim_next(db, worker="stopping", lease_seconds=30)
    assert claim is not None
    job_queue.return_to_queue(db, claim)
    again = job_queue.claim_next(db, worker="next", lease_seconds=30)
    assert again is not None and again.job_id == job_id and again.attempt == 2
    with pytest.raises(LeaseLost):
        job_queue.return_to_queue(db, claim)


@pytest.mark.postgres
def test_a_job_cancelled_while_it_is_claimed_never_starts(monkeypatch, pg_db) -> None:
    """On PostgreSQL a cancel does not wait for the claim's node lock: one that commits
    between the claim's read of the queue and its update leaves the job cancelled, and
    the claim takes the next job instead."""
    first = _job(pg_db, _user(pg_db, "a@lab.org"))
    second = _job(pg_db, _user(pg_db, "b@lab.org"))
    now, cancelled = job_queue._now, []

    def cancel_first_once():  # runs between the claim's read and its update
        if not cancelled:
            cancelled.append(first)
            with pg_db.session() as session:
                job_queue.stop(session, session.get(JobRow, first))
                session.commit()
        return now()

    monkeypatch.setattr(job_queue, "_now", cancel_first_once)
    claim = job_queue.claim_next(pg_db, worker="w", lease_seconds=30)
    assert cancelled == [first]
    assert claim is not None and claim.job_id == second
    assert _job_row(pg_db, first).status == "cancelled"
    assert _job_row(pg_db, second).status == "running"


@pytest.mark.postgres
def test_a_cancel_that_read_a_queued_job_a_claim_then_started_stops_it_running(
    monkeypatch, pg_db
) -> None:
    """The other order: a cancel read the job queued, a claim started it before the
    cancel wrote. The cancel asks the running job to stop; it does not mark it
    cancelled and free its model under the worker that holds it."""
    owner = _user(pg_db, "a@lab.org")
    job_id = _job(pg_db, owner)
    read = fits.latest_job

    def read_then_claim(session, *, model_id):  # the claim lands after the read
        job = read(session, model_id=model_id)
        assert job_queue.claim_next(pg_db, worker="w", lease_seconds=30)
        return job

    monkeypatch.setattr(fits, "latest_job", read_then_claim)
    model_id = _job_row(pg_db, job_id).model_id
    with pg_db.write_session() as session:
        user = session.get(UserRow, owner)
        job = fits.cancel_fit(session, user=user, model_id=model_id)
        assert (job.status, job.cancel_requested) == ("running", True)
    job = _job_row(pg_db, job_id)
    assert (job.status, job.cancel_requested, job.attempt) == ("running", True, 1)
    with pg_db.session() as session:
        assert session.get(ModelRow, model_id).busy_job_id == job_id


def test_a_claim_stores_its_times_as_every_other_write_does(db: Database) -> None:
    """The claim's statements are built by hand: its timestamps must still go through
    the columns' types (on SQLite a bare parameter was stored with a '+00:00' suffix
    that no other timestamp has, which breaks their comparison as text)."""
    job_id = _job(db, _user(db, "alice@lab.org"))
    assert job_queue.claim_next(db, worker="w", lease_seconds=30) is not None
    with db.session() as session:
        stored = (
            session.connection()
            .exec_driver_sql("SELECT created_at, started_at, lease_expires_at FROM jobs")
            .one()
        )
    assert len({type(value) for value in stored}) == 1
    if isinstance(stored[0], str):  # SQLite keeps text: one format for all three
        assert {len(value) for value in stored} == {len(stored[0])}, stored
    job = _job_row(db, job_id)
    assert job.created_at <= job.started_at < job.lease_expires_at
