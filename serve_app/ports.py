"""Free ports for private instances that share a machine (tests, the benchmark).

A port found by binding port 0 comes from the kernel's ephemeral range, the range every
outgoing connection and every other port-0 bind also draws from. Handed to a server that
binds it minutes later (HAProxy's statistics port is bound only when the first
application is deployed), it may have been taken by then: CI once saw HAProxy fail with
"Address already in use" on such a port. Ports below the ephemeral range are taken only
by explicit binds, so a free one stays free until its owner binds it.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

# Ray's worker processes bind explicit ports from 10002-19999 (its default
# --min-worker-port/--max-worker-port), so the private range starts above them.
PRIVATE_RANGE_START = 20_000
EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
LINUX_DEFAULT_EPHEMERAL = (32_768, 60_999)

_handed_out: set[int] = set()


def ephemeral_range() -> tuple[int, int]:
    try:
        low, high = (int(part) for part in EPHEMERAL_RANGE_FILE.read_text().split())
    except (OSError, ValueError):
        return LINUX_DEFAULT_EPHEMERAL  # also below macOS's 49152-65535
    return low, high


def private_port_range() -> range:
    """Ports outside the ephemeral range and Ray's worker ports."""
    low, high = ephemeral_range()
    if low - PRIVATE_RANGE_START >= 1_000:
        return range(PRIVATE_RANGE_START, low)
    above = range(max(high + 1, PRIVATE_RANGE_START), 65_536)
    if not above:
        raise RuntimeError(f"the ephemeral port range {low}-{high} leaves no private ports "
                           f"above {PRIVATE_RANGE_START}")
    return above


def bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("0.0.0.0", port))  # HAProxy and Ray listen on every interface
        except OSError:
            return False
    return True


def free_port() -> int:
    """A port nothing listens on, never handed out before by this process, and outside
    the range the kernel gives to others."""
    candidates = private_port_range()
    for _ in range(200):
        port = random.choice(candidates)
        if port not in _handed_out and bindable(port):
            _handed_out.add(port)
            return port
    raise RuntimeError(f"no free port found in {candidates.start}-{candidates.stop - 1}")
