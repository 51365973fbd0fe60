"""Length-prefixed pickled messages between the main pytest process and its ranks."""

from __future__ import annotations

import pickle
import socket
import struct
from typing import Any

__all__ = ["recv", "send"]

_HEADER = struct.Struct("!Q")


def send(sock: socket.socket, message: Any) -> None:
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    sock.sendall(_HEADER.pack(len(payload)) + payload)


def _exactly(sock: socket.socket, size: int) -> bytes | None:
    chunks = []
    while size:
        chunk = sock.recv(min(size, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def recv(sock: socket.socket) -> Any:
    """The next message, or ``None`` when the peer has gone (EOF or reset)."""
    try:
        header = _exactly(sock, _HEADER.size)
        if header is None:
            return None
        payload = _exactly(sock, _HEADER.unpack(header)[0])
    except (ConnectionError, OSError):
        return None
    return None if payload is None else pickle.loads(payload)
