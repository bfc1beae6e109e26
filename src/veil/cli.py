"""The `veil` command line: run a node, and manage it as its admin.

`veil serve` starts a domain node. Every other command talks to a running node over
HTTP as the admin: `--url` (or VEIL_URL), `--email` (or VEIL_EMAIL) and the password
from VEIL_PASSWORD, else a prompt.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

import veil
from veil._exceptions import VeilError

__all__ = ["main"]


def _connect(args: argparse.Namespace) -> veil.Client:
    password = os.environ.get("VEIL_PASSWORD") or getpass.getpass(f"Password for {args.email}: ")
    return veil.login(args.email, password, url=args.url, verbose=False)


def _serve(args: argparse.Namespace) -> None:
    import uvicorn

    from veil.server.app import create_app
    from veil.server.settings import Settings

    overrides = {
        key: value
        for key, value in {
            "host": args.host,
            "port": args.port,
            "data_dir": args.data_dir,
            "database_url": args.database_url,
            "job_backend": args.job_backend,
        }.items()
        if value is not None
    }
    settings = Settings(**overrides)
    app = create_app(settings)
    if args.demo:
        from veil.server.demo import ensure_demo_datasets

        created = ensure_demo_datasets(app.state.node)
        print(f"Demo datasets ready ({', '.join(created) or 'already there'}).")
    from veil.server.services.node import get_node

    with app.state.node.db.session() as session:
        name = get_node(session).name
    print(
        f"Veil node {name} on http://{settings.host}:{settings.port} (data in {settings.data_dir})"
    )
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level)


def _worker(args: argparse.Namespace) -> None:
    from veil.server.jobs.celery_app import run_worker

    run_worker(concurrency=args.concurrency)


def _users(args: argparse.Namespace) -> None:
    client = _connect(args)
    if args.action == "create":
        user = client.users.create(
            email=args.user, password=args.password, name=args.name or "", budget=args.budget
        )
        print(f"Created {user.email} with a budget of epsilon={user.budget:g} (id {user.id}).")
    elif args.action == "list":
        print(client.users.table())
    elif args.action == "set-budget":
        user = client.users.set_budget(args.user, args.budget)
        print(f"{user.email} now has a budget of epsilon={user.budget:g}.")
    elif args.action == "disable":
        print(f"Disabled {client.users.disable(args.user).email}.")


def _pairs(items: Sequence[str] | None, what: str) -> dict[str, str]:
    out = {}
    for item in items or ():
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise VeilError(f"{what} expects NAME=VALUE. Received: {item!r}")
        out[name] = value
    return out


def _datasets(args: argparse.Namespace) -> None:
    client = _connect(args)
    if args.action == "list":
        print(repr(client.datasets))
    elif args.action == "delete":
        client.datasets.delete(args.name)
        print(f"Deleted dataset {args.name}.")
    elif args.action == "upload":
        assets = {k: Path(v) for k, v in _pairs(args.asset, "--asset").items()}
        mocks = {k: np.load(v, allow_pickle=False) for k, v in _pairs(args.mock, "--mock").items()}
        bounds = {}
        for name, text in _pairs(args.bounds, "--bounds").items():
            low, _, high = text.partition(",")
            try:
                bounds[name] = (float(low), float(high))
            except ValueError:
                raise VeilError(
                    f"--bounds expects NAME=LOW,HIGH. Received: {name}={text}"
                ) from None
        client.datasets.upload(
            name=args.name,
            description=args.description,
            assets=assets,
            mock=mocks or None,
            bounds=bounds or None,
        )
        print(f"Uploaded dataset {args.name}.")


def _admin(args: argparse.Namespace) -> None:
    client = _connect(args)
    old = os.environ.get("VEIL_PASSWORD") or ""
    new = os.environ.get("VEIL_NEW_PASSWORD") or getpass.getpass("New password: ")
    client.change_password(old_password=old, new_password=new)
    print("Password changed.")


def _ledger(args: argparse.Namespace) -> None:
    print(repr(_connect(args).ledger))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="veil", description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("VEIL_URL", "http://localhost:8081"))
    parser.add_argument("--email", default=os.environ.get("VEIL_EMAIL", "admin@veil.dev"))
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run a domain node")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--data-dir", type=Path)
    serve.add_argument("--database-url")
    serve.add_argument("--job-backend", choices=["embedded", "celery"])
    serve.add_argument("--demo", action="store_true", help="load the demo datasets if missing")
    serve.set_defaults(run=_serve)

    worker = sub.add_parser("worker", help="run a Celery worker for --job-backend celery")
    worker.add_argument("--concurrency", type=int, default=1)
    worker.set_defaults(run=_worker)

    users = sub.add_parser("users", help="manage accounts").add_subparsers(
        dest="action", required=True
    )
    create = users.add_parser("create")
    create.add_argument("user", metavar="EMAIL")
    create.add_argument("--password", required=True)
    create.add_argument("--budget", type=float, required=True)
    create.add_argument("--name")
    users.add_parser("list")
    budget = users.add_parser("set-budget")
    budget.add_argument("user", metavar="EMAIL_OR_ID")
    budget.add_argument("budget", type=float)
    disable = users.add_parser("disable")
    disable.add_argument("user", metavar="EMAIL_OR_ID")
    for p in users.choices.values():
        p.set_defaults(run=_users)

    datasets = sub.add_parser("datasets", help="manage datasets").add_subparsers(
        dest="action", required=True
    )
    upload = datasets.add_parser("upload")
    upload.add_argument("name")
    upload.add_argument("--description", default="")
    upload.add_argument("--asset", action="append", required=True, metavar="NAME=FILE.npy")
    upload.add_argument("--mock", action="append", metavar="NAME=FILE.npy")
    upload.add_argument("--bounds", action="append", metavar="NAME=LOW,HIGH")
    datasets.add_parser("list")
    delete = datasets.add_parser("delete")
    delete.add_argument("name")
    for p in datasets.choices.values():
        p.set_defaults(run=_datasets)

    admin = sub.add_parser("admin", help="the admin account").add_subparsers(
        dest="action", required=True
    )
    admin.add_parser("passwd", help="change the admin password (VEIL_NEW_PASSWORD or prompt)")
    for p in admin.choices.values():
        p.set_defaults(run=_admin)

    sub.add_parser("ledger", help="every user's budget and spending").set_defaults(run=_ledger)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        args.run(args)
    except VeilError as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
