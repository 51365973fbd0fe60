"""TCP ports, for the one case that needs them: a multi-node ``torchrun`` rendezvous.

The plugin's own ranks never use a port (a ``FileStore`` and an ``AF_UNIX``
socket in a private directory), and single-node ``torchrun --standalone``
lets the c10d rendezvous bind port 0 itself, so concurrent sessions and
pytest-xdist workers cannot collide. Only a rendezvous that several launches
must agree on in advance needs a number chosen up front: :func:`free_port`
asks the kernel for one that is free now.
"""

from __future__ import annotations

import socket

__all__ = ["free_port"]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that the kernel reports free at this moment."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port
