from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError
from django.db.models import Q

from syncapp.models import Organization, SyncRun, UserMapping
from syncapp.sync import sync_mapping, sync_organization


class Command(BaseCommand):
    help = "Run a sync in the foreground and print a summary per mapping."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--org", help="organization code (UUID); default: every organization")
        parser.add_argument("--user", help="only the mapping with this Raynet or Outlook e-mail")
        parser.add_argument("--full", action="store_true", help="read both sides' whole window, not only changes")

    def handle(self, *args, org=None, user=None, full=False, **options) -> None:
        organizations = Organization.objects.order_by("name")
        if org:
            organizations = organizations.filter(code=org)
            if not organizations:
                raise CommandError(f"No organization with code {org}.")
        runs: list[SyncRun] = []
        for organization in organizations:
            if user:
                mappings = organization.mappings.filter(Q(raynet_email__iexact=user) | Q(outlook_upn__iexact=user))
                runs += [sync_mapping(mapping=m, trigger=SyncRun.Trigger.CLI, full=full) for m in mappings]
            else:
                runs += sync_organization(organization=organization, trigger=SyncRun.Trigger.CLI, full=full)
        if user and not runs:
            raise CommandError(f"No mapped user with e-mail {user}.")
        for run in runs:
            self.stdout.write(self.describe(run))
        if not runs:
            self.stdout.write("Nothing to sync: no organization has sync switched on with enabled users.")

    def describe(self, run: SyncRun) -> str:
        mapping: UserMapping = run.mapping
        counts = (
            "; ".join(
                f"{direction}: " + ", ".join(f"{n} {action}" for action, n in sorted(actions.items()))
                for direction, actions in sorted(run.counts.items())
            )
            or "no changes"
        )
        line = f"{mapping.organization.name} / {mapping}: {run.get_status_display()} ({counts})"
        return f"{line}\n    {run.error}" if run.error else line
