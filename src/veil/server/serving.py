"""How a node's app is served by uvicorn: address, port, and which proxies are trusted.

Uvicorn, left to itself, trusts `X-Forwarded-For` from 127.0.0.1. A node trusts it from
the addresses in `forwarded_allow_ips` only, none by default: otherwise anything that
can reach the node through a proxy on its own machine (or that sends the header from
there) could pass for another address, the node's own included, where the default
admin password is accepted. `veil serve` and the tests serve the app the same way.
"""

from __future__ import annotations

from typing import Any

from veil.server.settings import Settings

__all__ = ["uvicorn_options"]


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for `uvicorn.run` / `uvicorn.Config` besides the app."""
    trusted = settings.trusted_proxies
    return {
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.log_level,
        "proxy_headers": bool(trusted),
        "forwarded_allow_ips": ",".join(trusted) if trusted else "",
    }
