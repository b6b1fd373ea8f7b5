"""Free ports for private instances come from outside the kernel's ephemeral range, where
outgoing connections and port-0 binds cannot take them before their server binds them."""

from __future__ import annotations

import socket

import pytest

from serve_app import ports


def test_free_ports_lie_outside_the_ephemeral_range_and_ray_worker_ports() -> None:
    low, high = ports.ephemeral_range()
    given = [ports.free_port() for _ in range(50)]
    assert len(set(given)) == len(given)  # never the same port twice in one process
    for port in given:
        assert not low <= port <= high
        assert port >= ports.PRIVATE_RANGE_START  # above Ray's worker ports (10002-19999)


def test_a_port_in_use_is_not_handed_out(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as busy:
        busy.bind(("0.0.0.0", 0))
        taken = busy.getsockname()[1]
        busy.listen()
        monkeypatch.setattr(ports, "private_port_range", lambda: range(taken, taken + 1))
        with pytest.raises(RuntimeError, match="no free port"):
            ports.free_port()


def test_the_range_moves_above_an_ephemeral_range_that_starts_low(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ports, "ephemeral_range", lambda: (1024, 50_000))
    assert ports.private_port_range() == range(50_001, 65_536)
    monkeypatch.setattr(ports, "ephemeral_range", lambda: (32_768, 60_999))
    assert ports.private_port_range() == range(20_000, 32_768)
