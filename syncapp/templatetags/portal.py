"""Template filters of the portal's pages."""

from __future__ import annotations

from django import template
from django.utils.translation import gettext_lazy as _
from django.utils.translation import pgettext_lazy

register = template.Library()

# The engine's log actions (syncapp/sync/runlog.py) in the reader's language; an unknown one shows as is.
ACTION_LABELS = {
    "created": _("created"),
    "updated": _("updated"),
    "deleted": _("deleted"),
    "cancelled": _("cancelled"),
    "skipped": _("skipped"),
    "conflict": _("conflict"),
    "frozen": _("frozen"),
    "held": _("held back"),
    "later": pgettext_lazy("log action", "later"),
    "error": _("error"),
}


@register.filter
def action_label(action: str) -> str:
    return str(ACTION_LABELS.get(action, action))
