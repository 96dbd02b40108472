from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from syncapp.sandbox.tls import address_of, demo_certificates, https_server


class Command(BaseCommand):
    help = "Serve the app over HTTPS with the demo's local CA (for the sandboxes and our callback endpoints)."

    def add_arguments(self, parser) -> None:
        host, port = address_of(settings.DEMO_HTTPS_URL)
        parser.add_argument("--host", default=host)
        parser.add_argument("--port", type=int, default=port, help="default: DEMO_HTTPS_URL's")
        parser.add_argument("--certs", default=str(settings.DEMO_TLS_DIR))
        parser.add_argument("--make-only", action="store_true", help="make the certificates and exit")

    def handle(self, *args, host, port, certs, make_only, **options) -> None:
        if not settings.SANDBOX_ENABLED:
            raise CommandError("The sandbox is off (SANDBOX_ENABLED); there is nothing to serve over HTTPS.")
        certificates = demo_certificates(Path(certs))
        self.stdout.write(f"CA bundle for our HTTP sessions: {certificates.bundle} (set SANDBOX_CA_BUNDLE to it)")
        if make_only:
            return
        server = https_server(host, port, certificates)
        self.stdout.write(f"Serving https://{host}:{port}/ (sandbox APIs under /sandbox/)")
        try:
            server.serve_forever()
        finally:
            server.server_close()
