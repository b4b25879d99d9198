"""The agent's and the collector's one HTTP server: Prometheus /metrics from a registry, and
/healthz (live) and /readyz (ready) from a `Health` when given, on a daemon thread until closed.

Kubernetes probes these (the chart): the agent's readiness is "attached, and the collector connected
or the buffer under 90%" (agent/health.py), the collector's is its gRPC health, which follows Kafka
(collector/server.py). The kubelet's own gRPC probe speaks no TLS; /readyz works with TLS on.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterable
from typing import Any, Protocol
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer


class Health(Protocol):
    """What /healthz and /readyz report: (ok, why) each."""

    def live(self) -> tuple[bool, str]: ...

    def ready(self) -> tuple[bool, str]: ...


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # probes every few seconds: no log
        pass


class HttpServer:
    """One bound port, served from a daemon thread until `close()`."""

    def __init__(self, registry: CollectorRegistry, port: int, addr: str, health: Health | None = None) -> None:
        """Raises OSError when the port cannot be bound."""
        metrics_app = make_wsgi_app(registry)

        def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
            path = environ.get("PATH_INFO", "")
            if health is not None and path in ("/healthz", "/readyz"):
                ok, why = health.live() if path == "/healthz" else health.ready()
                start_response(
                    "200 OK" if ok else "503 Service Unavailable", [("Content-Type", "text/plain; charset=utf-8")]
                )
                return [f"{'ok' if ok else 'not ok'}: {why}\n".encode()]
            return metrics_app(environ, start_response)  # type: ignore[no-any-return]

        class Server(ThreadingWSGIServer):
            address_family = socket.AF_INET6 if ":" in addr else socket.AF_INET

        self._httpd = make_server(addr.strip("[]"), port, app, Server, handler_class=_Quiet)
        self.port = self._httpd.server_port
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="metrics-http", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop serving and free the port."""
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()
