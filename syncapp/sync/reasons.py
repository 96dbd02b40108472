"""Why the engine did what it did, as codes with parameters; the words come from Django's gettext.

A log entry stores its code and parameters (SyncLogEntry.reason_code, reason_params), so the portal
shows the reason in the reader's language (SyncLogEntry.reason_text), and a Czech catalogue can
translate every message: placeholders are %(name)s, never positional.
"""

from __future__ import annotations

from enum import StrEnum

from django.utils.translation import gettext_lazy as _
from django.utils.translation import override, pgettext_lazy


class Gone(StrEnum):
    """Why one side of a link is no longer there (or no longer in the sync's scope)."""

    DELETED_IN_OUTLOOK = "deleted_in_outlook"
    CANCELLED_IN_OUTLOOK = "cancelled_in_outlook"
    MADE_PRIVATE = "made_private"
    OCCURRENCE_DELETED = "occurrence_deleted"
    DELETED_IN_RAYNET = "deleted_in_raynet"
    CANCELLED_IN_RAYNET = "cancelled_in_raynet"


RAYNET_GONE = frozenset({Gone.DELETED_IN_RAYNET, Gone.CANCELLED_IN_RAYNET})  # the others: Outlook's side


GONE_WORDS = {
    Gone.DELETED_IN_OUTLOOK: pgettext_lazy("gone", "deleted in Outlook"),
    Gone.CANCELLED_IN_OUTLOOK: pgettext_lazy("gone", "cancelled in Outlook"),
    Gone.MADE_PRIVATE: pgettext_lazy("gone", "made private (policy: skip private events)"),
    Gone.OCCURRENCE_DELETED: pgettext_lazy("gone", "occurrence deleted in Outlook"),
    Gone.DELETED_IN_RAYNET: pgettext_lazy("gone", "deleted in Raynet"),
    Gone.CANCELLED_IN_RAYNET: pgettext_lazy("gone", "cancelled in Raynet"),
}


class Reason(StrEnum):
    # skipped
    ALREADY_SYNCED_ELSEWHERE = "already_synced_elsewhere"
    CANCELLED_IN_RAYNET = "cancelled_in_raynet"
    COMPLETED_WHEN_FIRST_SEEN = "completed_when_first_seen"
    NO_SCHEDULED_TIME = "no_scheduled_time"
    OUTSIDE_WINDOW = "outside_window"
    SERIES_MASTER = "series_master"
    CANCELLED_EVENT = "cancelled_event"
    PRIVATE_SKIPPED = "private_skipped"
    INVITATION_ALREADY_SYNCED = "invitation_already_synced"
    FROM_ORGANIZERS_MAILBOX = "from_organizers_mailbox"
    ORGANIZER_NOT_RAYNET_USER = "organizer_not_raynet_user"
    FROZEN_SKIPPED = "frozen_skipped"
    UNREADABLE = "unreadable"
    # later
    BEYOND_HORIZON = "beyond_horizon"
    OCCURRENCES_LATER = "occurrences_later"
    FIRST_SYNC_BUDGET = "first_sync_budget"
    # done
    CREATED_IN_OUTLOOK = "created_in_outlook"
    CREATED_IN_OUTLOOK_INVITED = "created_in_outlook_invited"
    CREATED_IN_RAYNET = "created_in_raynet"
    CREATED_TIME_BLOCKER = "created_time_blocker"
    UPDATED_OUTLOOK = "updated_outlook"
    UPDATED_RAYNET = "updated_raynet"
    CONFLICT_OUTLOOK_KEPT = "conflict_outlook_kept"
    CONFLICT_RAYNET_KEPT = "conflict_raynet_kept"
    DELETED_OTHER_SIDE = "deleted_other_side"
    CANCELLED_OTHER_SIDE = "cancelled_other_side"
    DELETION_IGNORED = "deletion_ignored"
    BOTH_GONE = "both_gone"
    RESTORED_IN_OUTLOOK = "restored_in_outlook"
    RESTORED_IN_RAYNET = "restored_in_raynet"
    FROZEN = "frozen"
    RECOVERED_OUTLOOK = "recovered_outlook"
    RECOVERED_RAYNET = "recovered_raynet"
    ADOPTED_RAYNET = "adopted_raynet"
    OWN_WRITE_RECOGNIZED = "own_write_recognized"
    HELD_MASS_DELETE = "held_mass_delete"
    # not done
    NOT_SYNCED = "not_synced"
    INTERRUPTED_CREATE_FAILED = "interrupted_create_failed"
    DELETION_NOT_DONE = "deletion_not_done"
    DEADLINE_REACHED = "deadline_reached"


MESSAGES = {
    Reason.ALREADY_SYNCED_ELSEWHERE: _("skipped: already synced with the mailbox of %(mailbox)s"),
    Reason.CANCELLED_IN_RAYNET: _("skipped: cancelled in Raynet"),
    Reason.COMPLETED_WHEN_FIRST_SEEN: _(
        "skipped: already completed when first seen (completed activities are not pushed)"
    ),
    Reason.NO_SCHEDULED_TIME: _("skipped: no scheduled time"),
    Reason.OUTSIDE_WINDOW: _("skipped: outside the sync window"),
    Reason.SERIES_MASTER: _("skipped: series master (its occurrences are synced one by one)"),
    Reason.CANCELLED_EVENT: _("skipped: cancelled event"),
    Reason.PRIVATE_SKIPPED: _("skipped: private event, policy = skip"),
    Reason.INVITATION_ALREADY_SYNCED: _("skipped: invitation already synced as Raynet %(raynet_type)s %(raynet_id)s"),
    Reason.FROM_ORGANIZERS_MAILBOX: _("skipped: synced from the organizer's own mailbox (%(organizer)s)"),
    Reason.ORGANIZER_NOT_RAYNET_USER: _("skipped: organizer %(organizer)s is not a Raynet user"),
    Reason.FROZEN_SKIPPED: _("skipped: the activity is completed in Raynet (link frozen)"),
    Reason.UNREADABLE: _("skipped: could not read %(side)s item %(item_id)s “%(title)s” (%(problem)s)"),
    Reason.BEYOND_HORIZON: _(
        "later: an occurrence beyond the occurrence horizon; it becomes a Raynet event when it comes within it"
    ),
    Reason.OCCURRENCES_LATER: _(
        "later: %(count)s occurrence(s) of recurring series are more than %(days)s days ahead; "
        "each becomes a Raynet event when it comes within %(days)s days"
    ),
    Reason.FIRST_SYNC_BUDGET: _(
        "later: %(count)s event(s) wait for the first sync's share of the Raynet budget "
        "(%(cap)s requests a day); they follow on the next days, the nearest first"
    ),
    Reason.CREATED_IN_OUTLOOK: _("created Outlook event “%(title)s”"),
    Reason.CREATED_IN_OUTLOOK_INVITED: _("created Outlook event “%(title)s” and invited %(count)s attendee(s)"),
    Reason.CREATED_IN_RAYNET: _("created Raynet event “%(title)s” from Outlook"),
    Reason.CREATED_TIME_BLOCKER: _("created Raynet event “%(title)s” from Outlook (private: time blocker)"),
    Reason.UPDATED_OUTLOOK: _("updated Outlook from the Raynet change"),
    Reason.UPDATED_RAYNET: _("updated Raynet from the Outlook change"),
    Reason.CONFLICT_OUTLOOK_KEPT: _("conflict: Outlook change kept (both sides changed)"),
    Reason.CONFLICT_RAYNET_KEPT: _("conflict: Raynet change kept (both sides changed)"),
    Reason.DELETED_OTHER_SIDE: _("%(gone)s: deleted on the other side"),
    Reason.CANCELLED_OTHER_SIDE: _("%(gone)s: cancelled on the other side"),
    Reason.DELETION_IGNORED: _("%(gone)s: left as it is (deletion policy = ignore)"),
    Reason.BOTH_GONE: _("%(outlook_gone)s and %(raynet_gone)s: nothing left to do"),
    Reason.RESTORED_IN_OUTLOOK: _("restored in Outlook: %(gone)s, but edited in Raynet since"),
    Reason.RESTORED_IN_RAYNET: _("restored in Raynet: %(gone)s, but edited in Outlook since"),
    Reason.FROZEN: _("completed in Raynet: later changes are no longer sent to Outlook"),
    Reason.RECOVERED_OUTLOOK: _("Found the Outlook event an interrupted run had created."),
    Reason.RECOVERED_RAYNET: _("Found the Raynet activity an interrupted run had created."),
    Reason.ADOPTED_RAYNET: _(
        "Found the Raynet activity an interrupted run had created (its reply was lost) and finished it."
    ),
    Reason.OWN_WRITE_RECOGNIZED: _("An interrupted run's own change was recognized; nothing to sync."),
    Reason.HELD_MASS_DELETE: _(
        "This run would delete %(count)s of %(active)s synced events. Nothing was deleted; "
        "an admin must confirm the deletions or reset the mailbox."
    ),
    Reason.NOT_SYNCED: _("Not synced this time: %(message)s"),
    Reason.INTERRUPTED_CREATE_FAILED: _("Could not finish an interrupted create: %(message)s"),
    Reason.DELETION_NOT_DONE: _("Deletion not done this time: %(message)s"),
    Reason.DEADLINE_REACHED: _(
        "The run reached its time limit (%(seconds)s s) and stopped between items; the next run continues."
    ),
}

SIDE_WORDS = {"outlook": pgettext_lazy("side", "Outlook"), "raynet": pgettext_lazy("side", "Raynet")}


def render_reason(code: str, params: dict | None = None) -> str:
    """The words for a reason code in the active language; parameters naming a Gone are translated too."""
    try:
        template = MESSAGES[Reason(code)]
    except ValueError:
        return code
    values = {}
    for key, value in (params or {}).items():
        if key.endswith("gone") and value in GONE_WORDS:
            value = GONE_WORDS[Gone(value)]
        elif key == "side" and value in SIDE_WORDS:
            value = SIDE_WORDS[value]
        values[key] = value
    try:
        return str(template) % values
    except (KeyError, TypeError, ValueError):
        return str(template)


def render_reason_en(code: str, params: dict | None = None) -> str:
    """The English words, stored with the entry for search and for readers without a catalogue."""
    with override("en"):
        return render_reason(code, params)
