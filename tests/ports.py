"""A free loopback TCP port for rendezvous (MASTER_PORT) in tests that start ranks or launchers."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A port the OS reports free right now (bind to port 0)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
