"""Answer whether a Kafka broker serves metadata at HOST:PORT, with the standard library only.

Used by ``kafka.sh`` before the project's virtualenv exists. Sends one Metadata request
(API key 3, version 4: the oldest Kafka 4.x still accepts) for no topics and succeeds when the
answer lists at least one broker. Exit 0: ready; exit 1: not (yet) answering.
"""

from __future__ import annotations

import socket
import struct
import sys

_METADATA = 3
_VERSION = 4
_CLIENT_ID = b"ghl-consumer-probe"


def _request() -> bytes:
    header = struct.pack(">hhih", _METADATA, _VERSION, 1, len(_CLIENT_ID)) + _CLIENT_ID
    body = struct.pack(">i?", 0, False)  # zero topics, no auto-creation
    payload = header + body
    return struct.pack(">i", len(payload)) + payload


def _read_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("broker closed the connection")
        data += chunk
    return data


def broker_count(host: str, port: int, timeout: float = 2.0) -> int:
    """Return how many brokers the Metadata answer lists; raise OSError when unreachable."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(_request())
        (size,) = struct.unpack(">i", _read_exact(sock, 4))
        answer = _read_exact(sock, size)
    # correlation id (4), throttle_time_ms (4), then the brokers array length.
    (count,) = struct.unpack_from(">i", answer, 8)
    return count


def main() -> int:
    host, _, port = sys.argv[1].rpartition(":")
    try:
        return 0 if broker_count(host or "127.0.0.1", int(port)) > 0 else 1
    except (OSError, struct.error):
        return 1


if __name__ == "__main__":
    sys.exit(main())
