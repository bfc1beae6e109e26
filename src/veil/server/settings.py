"""Node settings: one pydantic-settings class, read from `VEIL_*` variables and the CLI."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = [
    "DEFAULT_ADMIN_EMAIL",
    "DEFAULT_ADMIN_PASSWORD",
    "MAX_DB_BIGINT",
    "MAX_DB_INT",
    "Settings",
]

DEFAULT_ADMIN_EMAIL = "admin@veil.dev"
DEFAULT_ADMIN_PASSWORD = "changethis"
MAX_DB_INT = 2**31 - 1  # an Integer column on PostgreSQL
MAX_DB_BIGINT = 2**63 - 1  # a BigInteger column


class Settings(BaseSettings):
    """Everything a node needs to start; bad values are refused at start-up."""

    model_config = SettingsConfigDict(env_prefix="VEIL_", extra="forbid")

    data_dir: Path = Field(
        default=Path("veil-data"), description="where the database file and the arrays live"
    )
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL (sqlite:///... or postgresql+psycopg://...); "
        "default: SQLite file in data_dir",
    )
    host: str = Field(default="127.0.0.1", description="address to listen on")
    port: int = Field(default=8081, ge=0, le=65535, description="port to listen on")
    admin_email: str = Field(
        default=DEFAULT_ADMIN_EMAIL, description="the admin account created at first start"
    )
    admin_password: SecretStr = Field(
        default=SecretStr(DEFAULT_ADMIN_PASSWORD),
        description="the admin's password at first start; change the default at once",
    )
    token_ttl_seconds: int = Field(
        default=12 * 3600, gt=0, description="how long a login token stays valid"
    )
    login_failures_allowed: int = Field(
        default=5, ge=1, description="failed logins of one account from one address before backoff"
    )
    login_backoff_seconds: float = Field(
        default=1.0, gt=0, description="the first wait after those; it doubles with each failure"
    )
    login_backoff_max_seconds: float = Field(
        default=900.0, gt=0, le=86_400, description="the longest wait a backoff reaches"
    )
    default_delta: float = Field(
        default=1e-5, gt=0, lt=1, description="the node's delta, set at first start"
    )
    max_params: int = Field(
        default=5_000_000, gt=0, description="largest model (parameters), set at first start"
    )
    max_flops: int = Field(
        default=500_000_000, gt=0, description="largest model (FLOPs per row), set at first start"
    )
    max_upload_bytes: int = Field(
        default=8 * 1024**3, gt=0, description="largest dataset upload in bytes"
    )
    max_request_bytes: int = Field(
        default=1024**2,
        gt=0,
        description="largest JSON request body; array uploads have max_upload_bytes instead",
    )
    max_user_computations: int = Field(
        default=2,
        ge=1,
        le=64,
        description="steps and evaluations of one user computing at once; one more is "
        "refused (429) until one answers",
    )
    max_fit_steps: int = Field(
        default=100_000, ge=1, le=MAX_DB_INT, description="first-start default of the node's limit"
    )
    max_running_jobs: int = Field(
        default=1, ge=1, le=1000, description="first-start default: jobs one user may run at once"
    )
    max_active_jobs: int = Field(
        default=20,
        ge=1,
        le=MAX_DB_INT,
        description="first-start default: jobs one user may have queued or running",
    )
    max_models: int = Field(
        default=100, ge=1, le=MAX_DB_INT, description="first-start default: models per user"
    )
    max_drafts: int = Field(
        default=100,
        ge=1,
        le=MAX_DB_INT,
        description="first-start default: drafts (flow I) one user may hold uncompiled",
    )
    max_objects: int = Field(
        default=100_000,
        ge=2,
        le=MAX_DB_INT,
        description="first-start default: private objects (a step's loss and predictions) "
        "one user may hold; each step makes two",
    )
    max_object_bytes: int = Field(
        default=4 * 1024**3,
        ge=1,
        le=MAX_DB_BIGINT,
        description="first-start default: bytes one user's private objects may hold",
    )
    job_backend: Literal["embedded", "celery"] = Field(
        default="embedded",
        description="embedded: training threads in the node; celery: workers over Redis",
    )
    job_workers: int = Field(
        default=2, ge=1, description="training threads of the embedded backend"
    )
    job_lease_seconds: float = Field(
        default=30.0,
        ge=0.5,
        le=3600,
        description="a running job renews its lease every third of this; one not renewed "
        "for this long is requeued and resumes from its last checkpoint on any worker",
    )
    job_max_starts: int = Field(
        default=5, ge=1, description="a job whose worker was lost this many times fails"
    )
    checkpoint_every_seconds: float = Field(
        default=60.0, gt=0, description="a fit checkpoints at each epoch's end and this often"
    )
    redis_url: str = Field(
        default="redis://127.0.0.1:6379/0", description="the Redis of the celery backend"
    )
    celery_visibility_timeout_seconds: int = Field(
        default=300,
        ge=10,
        description="Redis redelivers a task a dead worker took after this long",
    )
    forwarded_allow_ips: str = Field(
        default="",
        description="comma-separated addresses of the reverse proxies whose X-Forwarded-For "
        "and X-Forwarded-Proto are trusted; none by default",
    )
    device: str = Field(default="cpu", description="torch device for training, e.g. cuda")
    torch_threads: int = Field(
        default=1,
        ge=1,
        le=1024,
        description="torch intra-op threads of each training thread on the CPU; a node "
        "trains on several threads at once (jobs, steps, evaluations), so by default each "
        "op runs on one thread and they share the cores",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="the node's log level"
    )

    @field_validator("database_url")
    @classmethod
    def _known_backend(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("sqlite", "postgresql")):
            raise ValueError(
                "database_url must start with sqlite:// or postgresql+psycopg://. "
                f"Received: {value!r}"
            )
        return value

    @field_validator("device")
    @classmethod
    def _usable_device(cls, value: str) -> str:
        """A node that cannot train on its device says so at start, not at its first job."""
        import torch

        try:
            device = torch.device(value)
        except (RuntimeError, TypeError):
            raise ValueError(
                f"device expects 'cpu', 'cuda' or 'cuda:N'. Received: {value!r}"
            ) from None
        if device.type not in ("cpu", "cuda"):
            raise ValueError(f"device expects 'cpu', 'cuda' or 'cuda:N'. Received: {value!r}")
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device={value!r}, but torch sees no CUDA device here; use 'cpu'")
        if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
            raise ValueError(
                f"device={value!r}, but torch sees {torch.cuda.device_count()} CUDA device(s)"
            )
        return value

    @field_validator("forwarded_allow_ips")
    @classmethod
    def _addresses(cls, value: str) -> str:
        for entry in (e.strip() for e in value.split(",")):
            if not entry or entry == "*":
                continue
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(
                    "forwarded_allow_ips expects comma-separated IP addresses or networks "
                    f"(or '*', any peer). Received: {entry!r}"
                ) from None
        return value

    @model_validator(mode="after")
    def _resolve_paths(self) -> Settings:
        self.data_dir = self.data_dir.expanduser().resolve()
        return self

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'veil.db'}"

    @property
    def trusted_proxies(self) -> list[str]:
        return [e.strip() for e in self.forwarded_allow_ips.split(",") if e.strip()]

    @property
    def arrays_dir(self) -> Path:
        return self.data_dir / "arrays"

    @property
    def uses_default_password(self) -> bool:
        return self.admin_password.get_secret_value() == DEFAULT_ADMIN_PASSWORD
