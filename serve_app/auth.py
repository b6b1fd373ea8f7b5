"""Optional API keys, checked as `Authorization: Bearer <key>` on every API route.

Keys come from an environment variable or a secrets file, never from the YAML. With no
keys configured the service is open (the local default). Comparison is constant-time, and
neither keys nor the presented token are ever logged.
"""

from __future__ import annotations

import hmac
import os
from pathlib import Path

from serve_app.config import AuthSettings
from serve_app.errors import APIError

# Routes that load balancers and orchestrators probe without credentials.
OPEN_PATHS = frozenset({"/", "/healthz", "/readyz", "/docs", "/openapi.json", "/redoc"})


def load_api_keys(settings: AuthSettings) -> tuple[bytes, ...]:
    keys: list[str] = os.environ.get(settings.api_keys_env, "").split(",")
    if settings.api_keys_file:
        path = Path(settings.api_keys_file)
        if not path.is_file():
            raise RuntimeError(f"auth.api_keys_file {path} does not exist")
        keys += path.read_text(encoding="utf-8").splitlines()
    return tuple(k.strip().encode() for k in keys if k.strip())


class APIKeyChecker:
    def __init__(self, keys: tuple[bytes, ...]) -> None:
        self._keys = keys

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def check(self, path: str, authorization: str | None) -> None:
        """Raise 401 unless the route is open or the bearer token is a configured key."""
        if not self._keys or path in OPEN_PATHS:
            return
        scheme, _, token = (authorization or "").partition(" ")
        presented = token.strip().encode()
        # Compare against every key (no early exit) so timing reveals nothing.
        matched = False
        for key in self._keys:
            matched |= hmac.compare_digest(presented, key)
        if scheme.lower() != "bearer" or not matched:
            raise APIError(
                401,
                "invalid_api_key",
                "Missing or invalid API key; send 'Authorization: Bearer <key>'.",
                headers={"WWW-Authenticate": "Bearer"},
            )
