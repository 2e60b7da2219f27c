"""A free loopback TCP port for rendezvous (MASTER_PORT) in tests that start ranks or launchers."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A port the OS reports free right now (bind to port 0: no two callers scan to the same one).

    Still only free *now*: give it to a launch only where the test means an explicit port
    (``launchers/pretrain.sh`` picks and retries a port itself when none is given).
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
