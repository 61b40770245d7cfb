"""A real HTTP server on loopback that records webhook deliveries (failing the first N on request)."""
from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Receiver:
    def __init__(self, fail_first: int = 0, port: int = 0) -> None:
        self.deliveries: list[tuple[dict[str, str], bytes]] = []
        self.attempts = 0
        self.event = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - the name http.server calls
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                outer.attempts += 1
                if outer.attempts <= fail_first:
                    self.send_response(503)
                    self.end_headers()
                    return
                outer.deliveries.append(({k: v for k, v in self.headers.items()}, body))
                self.send_response(204)
                self.end_headers()
                outer.event.set()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
