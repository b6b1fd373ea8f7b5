"""The HTTP port belongs to HAProxy, which forwards each request straight to an ingress
replica's own HTTP server (proxy_env: RAY_SERVE_ENABLE_HA_PROXY=1), not through Ray's
Python proxy actor. docs/performance.md, "The HTTP ingress", has what that saves."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import httpx
import pytest

from serve_app.proxy_hooks import private_haproxy_env
from tests.conftest import wait_until


def haproxy_servers(stats_port: int) -> dict[tuple[str, str], dict]:
    """HAProxy's statistics, one row per (proxy, server), from its CSV stats page."""
    response = httpx.get(f"http://127.0.0.1:{stats_port}/stats;csv", timeout=30)
    response.raise_for_status()
    rows = csv.DictReader(io.StringIO(response.text.lstrip("# ")))
    return {(row["pxname"], row["svname"]): row for row in rows}


def ingress_replicas(stats: dict) -> dict[str, dict]:
    return {
        server: row for (proxy, server), row in stats.items()
        if proxy == "http-asr" and server.startswith("SERVE_REPLICA_asr-ASRIngress")
    }


def test_haproxy_forwards_requests_to_the_ingress_replica(service: str, ray_instance: dict) -> None:
    port = ray_instance["haproxy_stats_port"]
    replicas = wait_until(lambda: ingress_replicas(haproxy_servers(port)), 60,
                          what="HAProxy to list the ingress replica")
    assert all(row["status"] == "UP" for row in replicas.values()), replicas
    before = sum(int(row["stot"]) for row in replicas.values())  # sessions so far

    for _ in range(3):
        response = httpx.get(f"{service}/healthz", timeout=30)
        assert response.status_code == 200 and response.json() == {"status": "ok"}

    after = sum(int(row["stot"]) for row in ingress_replicas(haproxy_servers(port)).values())
    assert after - before == 3


def test_private_haproxy_env_gives_own_ports_and_a_short_directory() -> None:
    ports = iter([18404, 19101, 18500])
    env = private_haproxy_env(Path("/tmp/hap-abc"), lambda: next(ports))
    assert env["RAY_SERVE_HAPROXY_SOCKET_PATH"] == "/tmp/hap-abc/admin.sock"
    # Every port Ray 2.60 binds in HAProxy mode, besides the HTTP port and the replicas'.
    assert {env["RAY_SERVE_HAPROXY_STATS_PORT"], env["RAY_SERVE_HAPROXY_METRICS_PORT"],
            env["RAY_SERVE_FALLBACK_PROXY_HTTP_PORT"]} == {"18404", "19101", "18500"}
    # Ray adds "/" + a 56-character node id below it; with the ".<pid>.tmp" HAProxy adds
    # while binding, the admin socket's path must stay within 95 characters.
    private_haproxy_env(Path("/tmp") / ("x" * 22), lambda: 1)  # 5 + 22 + 57 + 11 = 95
    with pytest.raises(ValueError, match="too long"):
        private_haproxy_env(Path("/tmp") / ("x" * 23), lambda: 1)
