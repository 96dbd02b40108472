from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError
from django.db.models import Q

from syncapp.models import Organization, SyncRun, UserMapping
from syncapp.sync import mapping_dry_run, sync_mapping, sync_organization
from syncapp.sync.engine import MappingPlan


class Command(BaseCommand):
    help = "Run a sync in the foreground and print a summary per mapping."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--org", help="organization code (UUID); default: every organization")
        parser.add_argument("--user", help="only the mapping with this Raynet or Outlook e-mail")
        parser.add_argument("--full", action="store_true", help="read both sides' whole window, not only changes")
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="print what a full run would do per mailbox (creates, updates, deletions, invitations); write nothing",
        )

    def handle(self, *args, org=None, user=None, full=False, dry_run=False, **options) -> None:
        organizations = Organization.objects.order_by("name")
        if org:
            organizations = organizations.filter(code=org)
            if not organizations:
                raise CommandError(f"No organization with code {org}.")
        if dry_run:
            return self.dry_run(organizations, user)
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

    def dry_run(self, organizations, user: str | None) -> None:
        mappings = UserMapping.objects.filter(organization__in=organizations).select_related("organization")
        if user:
            mappings = mappings.filter(Q(raynet_email__iexact=user) | Q(outlook_upn__iexact=user))
            if not mappings:
                raise CommandError(f"No mapped user with e-mail {user}.")
        for mapping in mappings.order_by("organization__name", "pk"):
            self.stdout.write(self.describe_plan(mapping_dry_run(mapping=mapping)))

    def describe_plan(self, plan: MappingPlan) -> str:
        mapping = plan.mapping
        lines = [f"{mapping.organization.name} / {mapping} (dry run, nothing written):"]
        for direction, label in (("to_outlook", "→ Outlook"), ("to_raynet", "→ Raynet")):
            counts = plan.counts()[direction]
            summary = ", ".join(f"{n} {verb}" for verb, n in sorted(counts.items())) or "nothing"
            lines.append(f"  {label}: {summary}")
            for action in plan.actions:
                if action.direction == direction and action.action != "skip":
                    when = f"{action.starts_at:%Y-%m-%d %H:%M} UTC" if action.starts_at else "no time"
                    lines.append(f"    {action.action} “{action.title}” ({when})")
        for title, starts_at, attendees in plan.invitations:
            when = f" on {starts_at:%Y-%m-%d %H:%M} UTC" if starts_at else ""
            lines.append(f"  Outlook would invite {', '.join(attendees)} to “{title}”{when}")
        if plan.held_deletions:
            lines.append(f"  The mass-delete guard would hold {plan.held_deletions} deletion(s) for an admin.")
        return "\n".join(lines)

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
