"""`/metrics`, `/healthz` and `/readyz` of `worker run`, on one port (ARCHITECTURE.md §6).

A stdlib HTTP server in a daemon thread: it dies with the process and never holds up
a shutdown. ``/healthz`` answers while the process lives; ``/readyz`` only while the
worker is ready (partitions assigned, recovery done, broker reachable), else 503 with
the reason.
"""

from __future__ import annotations

import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from worker.errors import ConfigError
from worker.obs.metrics import PrometheusObserver

log = logging.getLogger("worker.obs")

TEXT = "text/plain; charset=utf-8"


def serve(worker: Any, port: int, serves: bool = True) -> PrometheusObserver:
    """Serve ``worker``'s metrics on ``port`` (0: any free port, then ``observer.port``);
    ``serves``: see :class:`PrometheusObserver`."""
    observer = PrometheusObserver(worker, serves)
    handler = type("MetricsHandler", (_Handler,), {"observer": observer})
    try:
        server = ThreadingHTTPServer(("0.0.0.0", port), handler)
    except OSError as e:
        raise ConfigError(f"cannot serve metrics on port {port}: {e.strerror}") from None
    server.daemon_threads = True
    observer.server, observer.port = server, server.server_address[1]
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    log.info("metrics on port %d", observer.port, extra={"context": {"port": observer.port}})
    return observer


def not_ready_reason(worker: Any) -> str | None:
    """None when ready, else one line saying why not."""
    if getattr(worker, "ready", False):
        return "broker unreachable: waiting for it" if getattr(worker, "broker_unreachable", False) else None
    if getattr(worker, "stopping", False):
        return "stopping"
    if waiting := getattr(worker, "waiting_for", None):  # a scorer whose champion cannot be loaded
        return waiting
    if getattr(worker, "engine", None) is None:
        return "starting: checking topics and loading the state"
    return "recovering: replaying from the last commit or waiting for the broker"


class _Handler(BaseHTTPRequestHandler):
    observer: PrometheusObserver

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            try:
                body = generate_latest(self.observer.registry)
            except Exception:  # noqa: BLE001 - report it, keep serving
                log.exception("metrics scrape failed")
                self._reply(500, b"scrape failed: see the worker's log\n")
                return
            self._reply(200, body, CONTENT_TYPE_LATEST)
        elif path == "/healthz":
            self._reply(200, b"ok\n")
        elif path == "/readyz":
            reason = not_ready_reason(self.observer.worker)
            self._reply(503, f"not ready: {reason}\n".encode()) if reason else self._reply(200, b"ok\n")
        else:
            self._reply(404, b"not found: /metrics, /healthz or /readyz\n")

    def _reply(self, code: int, body: bytes, content_type: str = TEXT) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are not news: no line per request."""
