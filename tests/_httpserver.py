"""A real HTTP file server on 127.0.0.1 for tests: Range support and injectable faults.

with FileServer({"fma_small.zip": data}) as server:
    server.url                  # 'http://127.0.0.1:PORT/'
    server.cut_once["fma_small.zip"] = 1000   # next GET sends 1000 body bytes, then hangs up
    server.status["fma_small.zip"] = 500      # every GET answers 500
    server.ignore_range = True                # answer 200 with the whole file to Range requests
    server.requests                           # one Request per GET: path, range, status, bytes sent
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Request:
    path: str
    range: str | None
    status: int
    body_bytes: int


class FileServer:
    """Serve ``files`` ({name: bytes}) at ``/name`` from a thread; a context manager."""

    def __init__(self, files: dict[str, bytes]):
        self.files = dict(files)
        self.requests: list[Request] = []
        self.cut_once: dict[str, int] = {}
        self.status: dict[str, int] = {}
        self.ignore_range = False
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def __enter__(self) -> "FileServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def requests_for(self, name: str) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if r.path == "/" + name]

    def body_bytes(self, name: str) -> int:
        return sum(r.body_bytes for r in self.requests_for(name))

    def _record(self, request: Request) -> None:
        with self._lock:
            self.requests.append(request)

    def _handler_class(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep test output quiet
                pass

            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                name = self.path.lstrip("/")
                range_header = self.headers.get("Range")
                if name in server.status:
                    self._plain(server.status[name], range_header)
                    return
                data = server.files.get(name)
                if data is None:
                    self._plain(404, range_header)
                    return
                start = 0
                status = 200
                if range_header and not server.ignore_range:
                    match = re.fullmatch(r"bytes=(\d+)-(\d*)", range_header)
                    if match is None:
                        self._plain(400, range_header)
                        return
                    start = int(match.group(1))
                    if start >= len(data):
                        server._record(Request(self.path, range_header, 416, 0))
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    status = 206
                body = data[start:]
                self.send_response(status)
                self.send_header("Content-Type", "application/zip")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Accept-Ranges", "bytes")
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()
                with server._lock:
                    cut = server.cut_once.pop(name, None)
                if cut is not None:
                    body = body[:cut]
                    self.close_connection = True
                # Recorded before the body goes out: the client may act on it before we return.
                server._record(Request(self.path, range_header, status, len(body)))
                self.wfile.write(body)
                self.wfile.flush()

            def _plain(self, status: int, range_header: str | None) -> None:
                message = f"{status} from the test server\n".encode()
                server._record(Request(self.path, range_header, status, 0))
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(message)))
                self.end_headers()
                self.wfile.write(message)

        return Handler
