from __future__ import annotations

from collections import Counter

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from syncapp.demo import DemoError, demo_seed
from syncapp.models import EventLink, SyncRun
from syncapp.sandbox.tls import demo_certificates, https_served


class Command(BaseCommand):
    help = (
        "Seed the demo organization on the sandboxes and sync it (once: a second run keeps its data and syncs); "
        "--reset starts the demo data over. Prints how to sign in."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--reset", action="store_true", help="delete the demo organization and sandboxes first")
        parser.add_argument("--portal-url", default="http://127.0.0.1:8000/", help="the portal's address, printed")

    def handle(self, *args, reset: bool, portal_url: str, **options) -> None:
        if not settings.SANDBOX_ENABLED:
            raise CommandError("The sandbox is off: run the demo with DEMO=1 (`make run` does), DEBUG on.")
        # The sandboxes and our /hooks/ endpoints over HTTPS: `make run`'s serve_tls, or a server thread here.
        with https_served(settings.DEMO_HTTPS_URL, demo_certificates(settings.DEMO_TLS_DIR)):
            try:
                seed = demo_seed(reset=reset)
            except DemoError as error:
                raise CommandError(str(error)) from None
        organization = seed.organization
        linked = EventLink.objects.filter(organization=organization).exclude(state=EventLink.State.DELETED).count()
        state = "made" if seed.created else "kept as it was"
        self.stdout.write(
            f"Demo organization “{organization.name}” ({state}): {organization.mappings.count()} users mapped, "
            f"{linked} events linked. This seed's sync: {run_summary(seed.runs)}."
        )
        portal = portal_url.rstrip("/")
        self.stdout.write(f"Portal:  {portal}/  sign in as {seed.admin_email}, password {seed.password}")
        self.stdout.write(f"Support: {portal}/admin/  {seed.support_email}, password {seed.password}")
        self.stdout.write(f"Simulated Raynet and Outlook (act as a colleague): {portal}/sandbox/")


def run_summary(runs: list[SyncRun]) -> str:
    totals: Counter = Counter()
    for run in runs:
        for direction, actions in run.counts.items():
            for action, count in actions.items():
                totals[(direction, action)] += count
    words = {"to_outlook": "→ Outlook ", "to_raynet": "→ Raynet "}  # "none": decisions without a write
    parts = [f"{words.get(d, '')}{n} {action}" for (d, action), n in sorted(totals.items()) if n]
    return ", ".join(parts) or "nothing to change"
