"""Free loopback ports for the servers a test starts (the control plane, the operator, MLflow, rendezvous)."""

from __future__ import annotations

import socket


def free_ports(n: int) -> list[int]:
    """N distinct free loopback ports (all held open while picking, so none is handed out twice)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(s)
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port() -> int:
    """One free loopback port (free when picked: bind it soon)."""
    return free_ports(1)[0]
