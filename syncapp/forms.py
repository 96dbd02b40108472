"""The portal's forms: they validate and say what is wrong beside the field; workflows live in onboarding.py."""

from __future__ import annotations

from django import forms
from django.utils.translation import gettext_lazy as _

from syncapp.models import (
    RAYNET_REGIONS,
    ConflictWinner,
    DeletionMode,
    Membership,
    MicrosoftConnection,
    Organization,
    PrivateEventsMode,
    SyncLogEntry,
    SyncPolicy,
)
from syncapp.onboarding import RaynetDetails
from syncapp.templatetags.portal import action_label

SANDBOX_RAYNET_PATH = "/sandbox/raynet/demo/api/v2/"


class OrganizationForm(forms.ModelForm):
    class Meta:
        model = Organization
        fields = ["name"]
        labels = {"name": _("Organization name")}
        help_texts = {"name": _("Usually the company name, as your colleagues know it.")}


class InviteForm(forms.Form):
    email = forms.EmailField(label=_("E-mail address"))
    role = forms.ChoiceField(label=_("Role"), choices=Membership.Role.choices, initial=Membership.Role.VIEWER)


class RoleForm(forms.Form):
    role = forms.ChoiceField(label=_("Role"), choices=Membership.Role.choices)


def raynet_regions(sandbox_url: str | None) -> list[tuple[str, str]]:
    regions = [(url, label) for url, label in RAYNET_REGIONS]
    if sandbox_url:
        regions.append((sandbox_url, _("Sandbox Raynet (demo and tests)")))
    return regions


class RaynetForm(forms.Form):
    instance_name = forms.RegexField(
        label=_("Instance name"),
        regex=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$",
        max_length=100,
        help_text=_("The name in your Raynet address: for https://app.raynet.cz/acme/ it is “acme”."),
        error_messages={"invalid": _("Use only the letters, digits, dots, dashes and underscores of the name.")},
    )
    api_base_url = forms.ChoiceField(label=_("Region"))
    api_user_email = forms.EmailField(
        label=_("API user's e-mail"), help_text=_("The login e-mail of the Raynet user who owns the API key.")
    )
    api_key = forms.CharField(
        label=_("API key"),
        required=False,
        max_length=200,
        strip=True,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "off"}),
        help_text=_("Raynet → Settings → API keys. It is stored encrypted and never shown again."),
    )

    def __init__(self, *args, has_key: bool, sandbox_url: str | None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.has_key = has_key
        self.fields["api_base_url"].choices = raynet_regions(sandbox_url)
        if has_key:
            self.fields["api_key"].help_text = _("A key is stored. Leave this empty to keep it, or enter a new one.")

    def clean_api_key(self) -> str:
        key = self.cleaned_data["api_key"]
        if not key and not self.has_key:
            raise forms.ValidationError(_("Enter the API key."))
        return key

    def details(self) -> RaynetDetails:
        return RaynetDetails(**{name: self.cleaned_data[name] for name in RaynetDetails.__dataclass_fields__})


class MicrosoftForm(forms.Form):
    cloud = forms.ChoiceField(
        label=_("Microsoft cloud"), choices=MicrosoftConnection.Cloud.choices, initial=MicrosoftConnection.Cloud.GLOBAL
    )


POLICY_HELP = {
    "private_events_mode": _(
        "Outlook events marked private (with a lock): sync them normally, sync only their time as "
        "“Time blocker”, or leave them out."
    ),
    "sync_completed": _(
        "Off (recommended): once an activity is completed in Raynet, later edits such as meeting notes are "
        "not sent to Outlook, so customers who were invited get no update mails."
    ),
    "deletion_mode": _("What happens to the Raynet activity when its Outlook event is deleted or cancelled."),
    "conflict_winner": _("When both sides changed the same event since the last sync, whose change is kept."),
    "window_days_back": _("How many days into the past events are kept in sync."),
    "window_days_ahead": _("How many days into the future events are kept in sync."),
}


class PolicyForm(forms.ModelForm):
    window_days_back = forms.IntegerField(
        label=_("Days back"), min_value=0, max_value=365, help_text=POLICY_HELP["window_days_back"]
    )
    window_days_ahead = forms.IntegerField(
        label=_("Days ahead"), min_value=1, max_value=730, help_text=POLICY_HELP["window_days_ahead"]
    )

    class Meta:
        model = SyncPolicy
        fields = [
            "private_events_mode",
            "sync_completed",
            "deletion_mode",
            "conflict_winner",
            "window_days_back",
            "window_days_ahead",
        ]
        labels = {
            "private_events_mode": _("Private Outlook events"),
            "sync_completed": _("Keep syncing completed Raynet activities"),
            "deletion_mode": _("Events deleted in Outlook"),
            "conflict_winner": _("Conflicting changes"),
        }
        help_texts = POLICY_HELP
        widgets = {
            "private_events_mode": forms.RadioSelect,
            "deletion_mode": forms.RadioSelect,
            "conflict_winner": forms.RadioSelect,
        }


AS_ORGANIZATION = [("", _("As the organization"))]


class MappingRowForm(forms.Form):
    """One row of the mapping table; the prefix is the Raynet person id."""

    mailbox = forms.CharField(label=_("Outlook mailbox"), required=False, max_length=254)
    enabled = forms.BooleanField(label=_("Sync"), required=False)
    private_events_mode = forms.ChoiceField(
        label=_("Private events"), required=False, choices=AS_ORGANIZATION + PrivateEventsMode.choices
    )
    deletion_mode = forms.ChoiceField(
        label=_("Deletions"), required=False, choices=AS_ORGANIZATION + DeletionMode.choices
    )
    conflict_winner = forms.ChoiceField(
        label=_("Conflicts"), required=False, choices=AS_ORGANIZATION + ConflictWinner.choices
    )
    sync_completed = forms.TypedChoiceField(
        label=_("Completed activities"),
        required=False,
        choices=AS_ORGANIZATION + [("yes", _("Keep syncing")), ("no", _("Freeze"))],
        coerce=lambda value: {"yes": True, "no": False}.get(value),
        empty_value=None,
    )

    def __init__(self, *args, mailboxes: list[dict], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.mailboxes = mailboxes
        self.fields["mailbox"].widget.attrs.update({"list": "mailboxes", "autocomplete": "off"})

    def clean_mailbox(self) -> dict | None:
        from syncapp.onboarding import mailbox_find

        text = self.cleaned_data["mailbox"]
        if not text:
            return None
        mailbox = mailbox_find(self.mailboxes, text)
        if mailbox is None:
            raise forms.ValidationError(_("No mailbox “%(text)s” in your Microsoft 365."), params={"text": text})
        return mailbox

    def clean(self) -> dict:
        data = super().clean()
        if data.get("enabled") and not data.get("mailbox") and "mailbox" not in self.errors:
            self.add_error("enabled", _("Choose a mailbox before switching sync on."))
        return data

    def overrides(self) -> dict:
        return {
            name: self.cleaned_data[name]
            for name in ("private_events_mode", "deletion_mode", "conflict_winner", "sync_completed")
        }


def mailboxes_chosen_once(row_forms: list[MappingRowForm]) -> bool:
    """One mailbox belongs to one Raynet user: a second row choosing it gets an error beside it."""
    seen: set[str] = set()
    for form in row_forms:
        mailbox = form.cleaned_data.get("mailbox")
        if mailbox is None:
            continue
        if mailbox["id"] in seen:
            form.add_error("mailbox", _("This mailbox is already chosen for another Raynet user."))
        seen.add(mailbox["id"])
    return all(form.is_valid() for form in row_forms)


class LogFilterForm(forms.Form):
    user = forms.ChoiceField(label=_("User"), required=False)
    direction = forms.ChoiceField(
        label=_("Direction"), required=False, choices=[("", _("Both"))] + SyncLogEntry.Direction.choices
    )
    action = forms.ChoiceField(label=_("Action"), required=False)
    day = forms.DateField(label=_("Date"), required=False, widget=forms.DateInput(attrs={"type": "date"}))

    def __init__(self, *args, users: list[tuple[str, str]], actions: list[str], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["user"].choices = [("", _("Everybody"))] + users
        self.fields["action"].choices = [("", _("Any"))] + [(a, action_label(a)) for a in actions]
