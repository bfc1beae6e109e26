"""The `veil` command line: run a node, and manage it as its admin.

`veil serve` starts a domain node; its options also come from VEIL_* variables (an
option given on the command line wins). Every other command talks to a running node
over HTTP as the admin: --url (VEIL_URL), --email (VEIL_EMAIL) and the password from
VEIL_PASSWORD, else a prompt on the terminal.
"""

from __future__ import annotations

import argparse
import getpass
import math
import os
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydantic
from pydantic import SecretStr
from pydantic.fields import FieldInfo

import veil
from veil._exceptions import VeilError

__all__ = ["main"]

DEFAULT_URL = "http://localhost:8081"
DEFAULT_EMAIL = "admin@veil.dev"
# `veil serve` options; every other setting comes from its VEIL_* variable only.
_SERVE_OPTIONS = ("host", "port", "data_dir", "database_url", "job_backend")


class UsageError(Exception):
    """A command that cannot run as given; `main` prints it on one line."""


def _secret(variable: str, prompt: str) -> str:
    """`variable` from the environment, else typed at a terminal; never an EOFError."""
    value = os.environ.get(variable)
    if value:
        return value
    if not sys.stdin.isatty():
        raise UsageError(f"{variable} is not set and there is no terminal to ask: set {variable}.")
    try:
        return getpass.getpass(prompt)
    except (EOFError, KeyboardInterrupt):
        raise UsageError(f"No password given; set {variable} or type it at the prompt.") from None


def _login(args: argparse.Namespace, password: str) -> veil.Client:
    client = veil.login(args.email, password, url=args.url, verbose=False)
    for warning in client.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return client


def _connect(args: argparse.Namespace) -> veil.Client:
    return _login(args, _secret("VEIL_PASSWORD", f"Password for {args.email}: "))


def _serve(args: argparse.Namespace) -> None:
    import uvicorn

    from veil.server.app import create_app
    from veil.server.serving import uvicorn_options
    from veil.server.settings import Settings

    given = {name: getattr(args, name) for name in _SERVE_OPTIONS}
    settings = Settings(**{name: value for name, value in given.items() if value is not None})
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
    uvicorn.run(app, **uvicorn_options(settings))


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


def _load_mock(name: str, path: str) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise UsageError(f"--mock {name}: cannot read {path} as a .npy array ({exc})") from None


def _finite(text: str) -> float:
    """A finite number (argparse type): budgets and bounds are never NaN nor infinite."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    """An integer >= 1 (argparse type)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def _datasets(args: argparse.Namespace) -> None:
    client = _connect(args)
    if args.action == "list":
        print(repr(client.datasets))
    elif args.action == "delete":
        client.datasets.delete(args.name)
        print(f"Deleted dataset {args.name}.")
    elif args.action == "upload":
        assets = {k: Path(v) for k, v in _pairs(args.asset, "--asset").items()}
        mocks = {k: _load_mock(k, v) for k, v in _pairs(args.mock, "--mock").items()}
        bounds = {}
        for name, text in _pairs(args.bounds, "--bounds").items():
            low, _, high = text.partition(",")
            try:
                bounds[name] = (_finite(low), _finite(high))
            except (ValueError, argparse.ArgumentTypeError):
                raise VeilError(
                    f"--bounds expects NAME=LOW,HIGH of finite numbers. Received: {name}={text}"
                ) from None
        client.datasets.upload(
            name=args.name,
            description=args.description,
            assets=assets,
            mock=mocks or None,
            bounds=bounds or None,
            subject=args.subject,
        )
        print(f"Uploaded dataset {args.name}.")


def _admin(args: argparse.Namespace) -> None:
    old = _secret("VEIL_PASSWORD", f"Current password for {args.email}: ")
    client = _login(args, old)
    new = _secret("VEIL_NEW_PASSWORD", "New password: ")
    client.change_password(old_password=old, new_password=new)
    print("Password changed.")


def _ledger(args: argparse.Namespace) -> None:
    print(repr(_connect(args).ledger))


def _setting_default(field: FieldInfo) -> str:
    default = field.get_default()
    if default is None or default == "":  # the description says what happens then
        return ""
    if isinstance(default, SecretStr):  # the documented default password, shown as such
        default = default.get_secret_value()
    return f"default: {default}"


def _setting_help(name: str, field: FieldInfo) -> str:
    facts = "; ".join(filter(None, [f"env VEIL_{name.upper()}", _setting_default(field)]))
    return f"{field.description} [{facts}]"


def _settings_epilog() -> str:
    from veil.server.settings import Settings

    lines = ["settings from the environment only:"]
    for name, field in Settings.model_fields.items():
        if name not in _SERVE_OPTIONS:
            default = _setting_default(field)
            text = f"{field.description}" + (f" [{default}]" if default else "")
            lines += textwrap.wrap(
                text,
                width=100,
                initial_indent=f"  VEIL_{name.upper():<24}",
                subsequent_indent=" " * 31,
            )
    return "\n".join(lines)


def _add_serve(sub: argparse._SubParsersAction) -> None:
    from veil.server.settings import Settings

    serve = sub.add_parser(
        "serve",
        help="run a domain node",
        description="Run a domain node: the API under /api/v1, the dashboard at /, and "
        "the API's reference at /docs.",
        epilog=_settings_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    fields = Settings.model_fields
    serve.add_argument("--host", help=_setting_help("host", fields["host"]))
    serve.add_argument("--port", type=int, help=_setting_help("port", fields["port"]))
    serve.add_argument("--data-dir", type=Path, help=_setting_help("data_dir", fields["data_dir"]))
    serve.add_argument("--database-url", help=_setting_help("database_url", fields["database_url"]))
    serve.add_argument(
        "--job-backend",
        choices=["embedded", "celery"],
        help=_setting_help("job_backend", fields["job_backend"]),
    )
    serve.add_argument(
        "--demo", action="store_true", help="load the demo datasets if the node lacks them"
    )
    serve.set_defaults(run=_serve)


def _add_users(sub: argparse._SubParsersAction) -> None:
    users = sub.add_parser("users", help="manage accounts").add_subparsers(
        dest="action", required=True
    )
    create = users.add_parser("create", help="create a data scientist's account")
    create.add_argument("user", metavar="EMAIL", help="the account's e-mail (its login)")
    create.add_argument("--password", required=True, help="its first password (8+ characters)")
    create.add_argument("--budget", type=_finite, required=True, help="its epsilon budget")
    create.add_argument("--name", help="a display name; default: the e-mail")
    users.add_parser("list", help="every account with its budget")
    budget = users.add_parser("set-budget", help="set an account's epsilon budget")
    budget.add_argument("user", metavar="EMAIL_OR_ID", help="the account")
    budget.add_argument("budget", type=_finite, help="the new budget (epsilon, >= 0)")
    disable = users.add_parser("disable", help="disable an account and revoke its logins")
    disable.add_argument("user", metavar="EMAIL_OR_ID", help="the account")
    for p in users.choices.values():
        p.set_defaults(run=_users)


def _add_datasets(sub: argparse._SubParsersAction) -> None:
    datasets = sub.add_parser("datasets", help="manage datasets").add_subparsers(
        dest="action", required=True
    )
    upload = datasets.add_parser("upload", help="upload .npy files as a new dataset")
    upload.add_argument("name", help="the dataset's name, unique on the node")
    upload.add_argument("--description", default="", help="public description; default: none")
    upload.add_argument(
        "--asset",
        action="append",
        required=True,
        metavar="NAME=FILE.npy",
        help="a private array, one per asset (repeat the option)",
    )
    upload.add_argument(
        "--mock",
        action="append",
        metavar="NAME=FILE.npy",
        help="public mock data for an asset; default: generated from its bounds",
    )
    upload.add_argument(
        "--bounds",
        action="append",
        metavar="NAME=LOW,HIGH",
        help="declared value range of an asset (public); uint8 and bool default to their "
        "full range, other dtypes need bounds or a mock",
    )
    upload.add_argument(
        "--subject",
        metavar="NAME",
        help="the asset holding each row's data subject (an integer id per row, e.g. a "
        "patient): privacy then protects each subject, all its rows together",
    )
    datasets.add_parser("list", help="every dataset with its assets")
    delete = datasets.add_parser("delete", help="delete a dataset and its files")
    delete.add_argument("name", help="the dataset's name or id")
    for p in datasets.choices.values():
        p.set_defaults(run=_datasets)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="veil",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--url",
        default=os.environ.get("VEIL_URL", DEFAULT_URL),
        help=f"the node, for the admin commands [env VEIL_URL; default: {DEFAULT_URL}]",
    )
    parser.add_argument(
        "--email",
        default=os.environ.get("VEIL_EMAIL", DEFAULT_EMAIL),
        help=f"the admin's e-mail [env VEIL_EMAIL; default: {DEFAULT_EMAIL}]",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _add_serve(sub)

    worker = sub.add_parser(
        "worker",
        help="run a Celery worker for --job-backend celery",
        description="Run training jobs for nodes started with --job-backend celery; it "
        "reads the same VEIL_* settings as the node (see `veil serve --help`).",
    )
    worker.add_argument(
        "--concurrency", type=_positive_int, default=1, help="jobs run at once; default: 1"
    )
    worker.set_defaults(run=_worker)

    _add_users(sub)
    _add_datasets(sub)

    admin = sub.add_parser("admin", help="the admin account").add_subparsers(
        dest="action", required=True
    )
    admin.add_parser(
        "passwd",
        help="change the admin password: the current one from VEIL_PASSWORD, the new one "
        "from VEIL_NEW_PASSWORD, else prompts",
    )
    for p in admin.choices.values():
        p.set_defaults(run=_admin)

    sub.add_parser("ledger", help="every user's budget and spending").set_defaults(run=_ledger)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        args.run(args)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except VeilError as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except pydantic.ValidationError as exc:  # the node's settings (serve, worker)
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        print(f"error: invalid settings: {problems}", file=sys.stderr)
        return 2
    except OSError as exc:  # a data dir or file the node cannot use
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
