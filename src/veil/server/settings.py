"""Node settings: one pydantic-settings class, read from `VEIL_*` variables and the CLI."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["DEFAULT_ADMIN_EMAIL", "DEFAULT_ADMIN_PASSWORD", "Settings"]

DEFAULT_ADMIN_EMAIL = "admin@veil.dev"
DEFAULT_ADMIN_PASSWORD = "changethis"


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
        default=5, ge=1, description="failed logins per e-mail or address before a lockout"
    )
    login_lockout_seconds: float = Field(default=30.0, gt=0, description="how long a lockout lasts")
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
    job_backend: Literal["embedded", "celery"] = Field(
        default="embedded",
        description="embedded: training threads in the node; celery: workers over Redis",
    )
    job_workers: int = Field(
        default=2, ge=1, description="training threads of the embedded backend"
    )
    redis_url: str = Field(
        default="redis://127.0.0.1:6379/0", description="the Redis of the celery backend"
    )
    forwarded_allow_ips: str = Field(
        default="",
        description="reverse proxies whose X-Forwarded-For is trusted; none by default",
    )
    device: str = Field(default="cpu", description="torch device for training, e.g. cuda")
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

    @model_validator(mode="after")
    def _resolve_paths(self) -> Settings:
        self.data_dir = self.data_dir.expanduser().resolve()
        return self

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'veil.db'}"

    @property
    def arrays_dir(self) -> Path:
        return self.data_dir / "arrays"

    @property
    def uses_default_password(self) -> bool:
        return self.admin_password.get_secret_value() == DEFAULT_ADMIN_PASSWORD
