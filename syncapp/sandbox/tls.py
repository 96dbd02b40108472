"""HTTPS for the demo's sandboxes: a local CA made with trustme, and a TLS listener in front of the Django app.

MSAL accepts only https authorities, so the Graph sandbox's login host must speak TLS. People keep using the
portal over plain HTTP (no certificate warning in their browser); the sandbox APIs and our callback endpoints
are also served here over HTTPS, by the same WSGI application, for the product's own HTTP sessions, which
trust the CA through `settings.SANDBOX_CA_BUNDLE` only (nothing is installed system-wide).
"""

from __future__ import annotations

import logging
import socket
import ssl
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import certifi
from django.core.servers.basehttp import ThreadedWSGIServer, WSGIRequestHandler, get_internal_wsgi_application

logger = logging.getLogger("syncapp.sandbox.tls")

HANDSHAKE_TIMEOUT = 10.0


@dataclass(frozen=True)
class DemoCertificates:
    ca: Path  # the local CA alone
    bundle: Path  # the usual CAs plus the local one: what our sessions verify with
    server: Path  # the server's key and certificate chain, PEM


def demo_certificates(directory: Path, hosts: tuple[str, ...] = ("127.0.0.1", "localhost")) -> DemoCertificates:
    """The demo's CA and server certificate, made once in `directory` and reused afterwards."""
    files = DemoCertificates(directory / "ca.pem", directory / "ca-bundle.pem", directory / "server.pem")
    if all(path.exists() for path in (files.ca, files.bundle, files.server)):
        return files
    import trustme  # a development dependency: only the demo makes certificates

    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA(organization_name="Raysync demo (local only)")
    ca.cert_pem.write_to_path(str(files.ca))
    ca.issue_cert(*hosts).private_key_and_cert_chain_pem.write_to_path(str(files.server))
    files.bundle.write_text(Path(certifi.where()).read_text() + "\n" + files.ca.read_text())
    files.server.chmod(0o600)
    return files


class HttpsRequestHandler(WSGIRequestHandler):
    """Django's development request handler, after a TLS handshake done in the request's own thread."""

    def setup(self) -> None:
        self.request.settimeout(HANDSHAKE_TIMEOUT)
        self.request.do_handshake()
        self.request.settimeout(None)
        super().setup()

    def get_environ(self) -> dict:
        environ = super().get_environ()
        environ["HTTPS"] = "on"  # wsgiref derives wsgi.url_scheme from it: absolute URLs say https
        return environ


class HttpsServer(ThreadedWSGIServer):
    def __init__(self, address: tuple[str, int], certificates: DemoCertificates) -> None:
        super().__init__(address, HttpsRequestHandler)
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(str(certificates.server))

    def get_request(self):
        sock, address = super().get_request()
        # The handshake waits for the request thread, so one slow client never blocks accepting the next.
        return self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), address

    def handle_error(self, request, client_address) -> None:
        if isinstance(sys.exc_info()[1], ssl.SSLEOFError):  # connected and left: a port probe (wait_until_answering)
            return
        logger.warning("TLS connection from %s failed", client_address[0], exc_info=True)


def https_server(host: str, port: int, certificates: DemoCertificates) -> HttpsServer:
    """A threaded HTTPS server for the project's WSGI application (port 0: any free port)."""
    server = HttpsServer((host, port), certificates)
    server.set_app(get_internal_wsgi_application())
    return server


def address_of(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 443


def answers(url: str) -> bool:
    """Something accepts connections at the URL's host and port."""
    try:
        with socket.create_connection(address_of(url), timeout=1):
            return True
    except OSError:
        return False


def wait_until_answering(url: str, *, seconds: float, still_waiting=lambda: True) -> bool:
    """Wait for a server that is starting; gives up after `seconds` or when `still_waiting()` turns False."""
    give_up = time.monotonic() + seconds
    while time.monotonic() < give_up and still_waiting():
        if answers(url):
            return True
        time.sleep(0.2)
    return False


@contextmanager
def https_served(url: str, certificates: DemoCertificates) -> Iterator[None]:
    """The app served over HTTPS at `url` for the duration: by a server thread here, unless one answers already
    (`make run`'s serve_tls), so `manage.py seed_demo` works with or without the demo running."""
    if answers(url):
        yield
        return
    server = https_server(*address_of(url), certificates)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
