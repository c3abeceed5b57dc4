"""The transport's limit: a bare HTTP server that sends one file with ``sendfile``.

Every GET, whatever its path, is answered with the whole file, the kernel copying it from the
page cache to the socket with no pass through user space. The benchmark divides openflr's
download speed by this server's, on the same loopback and with the same client.

Run ``python bench/sendfile_server.py FILE PORT``; it listens on 127.0.0.1 only and prints
``ready`` once it accepts connections.
"""

from __future__ import annotations

import os
import socket
import socketserver
import sys
from pathlib import Path


class _Handler(socketserver.BaseRequestHandler):
    path: Path

    def handle(self) -> None:
        sock: socket.socket = self.request
        with sock.makefile("rb") as reader:
            while True:
                head = _read_head(reader)
                if head is None:
                    return
                size = self.path.stat().st_size
                sock.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                    + f"Content-Length: {size}\r\n\r\n".encode("ascii")
                )
                if not head.startswith(b"HEAD "):
                    with self.path.open("rb") as fh:
                        sock.sendfile(fh)


def _read_head(reader: object) -> bytes | None:
    """The request line and headers of the next request, or None when the client left."""
    lines = []
    while True:
        line = reader.readline(65536)  # type: ignore[attr-defined]
        if not line:
            return None
        if line in (b"\r\n", b"\n"):
            return b"".join(lines)
        lines.append(line)
        if len(lines) > 100:
            return None


class _Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


def main() -> int:
    path, port = Path(sys.argv[1]), int(sys.argv[2])
    _Handler.path = path
    with _Server(("127.0.0.1", port), _Handler) as server:
        print("ready", flush=True)
        server.serve_forever()
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
