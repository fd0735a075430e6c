"""The messages between the invoker and its zygote and worker processes: length-prefixed compact JSON over
UNIX stream sockets (4-byte big-endian length, then UTF-8 JSON). Pure encode/decode plus blocking helpers
for the child side; the invoker side reads with asyncio."""

from __future__ import annotations

import json
import socket
import struct
from typing import Any

HEADER = struct.Struct(">I")
MAX_MESSAGE = 64 * 1024 * 1024
# Written to a worker's stdout and stderr after each activation, as OpenWhisk's runtimes do, so that the
# invoker knows every line of that activation has arrived.
SENTINEL = "XXX_THE_END_OF_A_HEADRACE_ACTIVATION_XXX"


def encode(message: Any) -> bytes:
    body = json.dumps(message, separators=(",", ":")).encode()
    return HEADER.pack(len(body)) + body


def decode(body: bytes) -> Any:
    return json.loads(body)


def send(sock: socket.socket, message: Any) -> None:
    sock.sendall(encode(message))


def _exactly(sock: socket.socket, n: int) -> bytes | None:
    chunks: list[bytes] = []
    while n:
        chunk = sock.recv(min(n, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def recv(sock: socket.socket) -> Any | None:
    """The next message, or None when the other side has gone."""
    head = _exactly(sock, HEADER.size)
    if head is None:
        return None
    (size,) = HEADER.unpack(head)
    if size > MAX_MESSAGE:
        raise ValueError(f"message of {size} bytes exceeds {MAX_MESSAGE}")
    body = _exactly(sock, size)
    return None if body is None else decode(body)
