"""A real Redis for tests: Debian's redis-server on a free port (never 6379), in a temporary
directory, stopped at the end. `.ci/run` installs it and sets ASR_REQUIRE_REDIS=1, so in CI a
missing server fails the run; elsewhere the tests that need it skip and say why."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import free_port


MISSING = "redis-server is not installed (Debian's redis-server; .ci/run installs it)"


def skip_or_fail_without_redis() -> None:
    """Skip, saying why; in CI (ASR_REQUIRE_REDIS set) a missing server fails instead."""
    if os.environ.get("ASR_REQUIRE_REDIS"):
        pytest.fail(MISSING)
    pytest.skip(MISSING)


class RedisServer:
    @staticmethod
    def installed() -> bool:
        return shutil.which("redis-server") is not None

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            skip_or_fail_without_redis()
        self._binary = binary
        self._dir = Path(tempfile.mkdtemp(prefix="redis-"))
        self.port = free_port()
        self._process: subprocess.Popen | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        # AOF on, as the docs ask of a production instance; no RDB snapshots to wait for.
        self._process = subprocess.Popen(
            [self._binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self._dir),
             "--save", "", "--appendonly", "yes", "--maxmemory-policy", "volatile-lru"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.ping():
                return
            time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def ping(self) -> bool:
        import redis

        try:
            return bool(redis.Redis(port=self.port, socket_timeout=0.5).ping())
        except redis.RedisError:
            return False

    def kill(self) -> None:
        """Gone at once, as a crashed server is."""
        if self._process is not None:
            self._process.kill()
            self._process.wait(10)
            self._process = None

    def stop(self) -> None:
        self.kill()
        shutil.rmtree(self._dir, ignore_errors=True)
