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

    data_dir: Path = Path("veil-data")
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default: SQLite file in data_dir"
    )
    host: str = "127.0.0.1"
    port: int = Field(default=8081, ge=0, le=65535)
    admin_email: str = DEFAULT_ADMIN_EMAIL
    admin_password: SecretStr = SecretStr(DEFAULT_ADMIN_PASSWORD)
    token_ttl_seconds: int = Field(default=12 * 3600, gt=0)
    login_failures_allowed: int = Field(default=5, ge=1)
    login_lockout_seconds: float = Field(default=30.0, gt=0)
    default_delta: float = Field(default=1e-5, gt=0, lt=1)
    default_budget: float = Field(default=1.0, ge=0)
    max_params: int = Field(default=5_000_000, gt=0)
    max_flops: int = Field(default=500_000_000, gt=0)
    max_upload_bytes: int = Field(default=8 * 1024**3, gt=0)
    job_backend: Literal["embedded", "celery"] = "embedded"
    job_workers: int = Field(default=2, ge=1)
    redis_url: str = "redis://127.0.0.1:6379/0"
    forwarded_allow_ips: str = Field(
        default="",
        description="reverse proxies whose X-Forwarded-For is trusted; none by default",
    )
    device: str = "cpu"
    log_level: Literal["debug", "info", "warning", "error"] = "info"

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
