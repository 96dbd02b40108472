"""Forms of the simulated Raynet and Outlook pages (syncapp/sandbox/pages.py): what a person types in either app.

Times are typed in the portal's time zone (TIME_ZONE) and come out aware; the sandboxes store them in UTC.
"""

from __future__ import annotations

from django import forms
from django.utils.translation import gettext_lazy as _

DATETIME_INPUT = forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M")


class TimesMixin:
    """Start and end, the end not before the start (as both apps refuse)."""

    def clean(self) -> dict:
        cleaned = super().clean()
        start, end = cleaned.get("start"), cleaned.get("end")
        if start and end and end < start:
            self.add_error("end", _("The end is before the start."))
        return cleaned


class RaynetActivityForm(TimesMixin, forms.Form):
    entity = forms.ChoiceField(label=_("Type"), choices=[("meeting", _("Meeting")), ("event", _("Event"))])
    title = forms.CharField(label=_("Title"), max_length=200)
    start = forms.DateTimeField(label=_("Start"), widget=DATETIME_INPUT)
    end = forms.DateTimeField(label=_("End"), widget=DATETIME_INPUT)
    place = forms.CharField(label=_("Place"), max_length=200, required=False)
    description = forms.CharField(label=_("Description"), required=False, widget=forms.Textarea(attrs={"rows": 3}))
    participants = forms.MultipleChoiceField(
        label=_("Participants"),
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text=_("Contacts in this Raynet: customers or colleagues."),
    )

    def __init__(self, *args, people: list[tuple[str, str]], editing: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["participants"].choices = people
        if editing:  # a record keeps its type
            del self.fields["entity"]


class MoveForm(forms.Form):
    """A new start; the length stays."""

    start = forms.DateTimeField(label=_("New start"), widget=DATETIME_INPUT)


class OutlookEventForm(TimesMixin, forms.Form):
    subject = forms.CharField(label=_("Subject"), max_length=255)
    start = forms.DateTimeField(label=_("Start"), widget=DATETIME_INPUT)
    end = forms.DateTimeField(label=_("End"), widget=DATETIME_INPUT)
    location = forms.CharField(label=_("Location"), max_length=255, required=False)
    body = forms.CharField(label=_("Notes"), required=False, widget=forms.Textarea(attrs={"rows": 3}))
    private = forms.BooleanField(label=_("Private"), required=False)
    attendees = forms.CharField(
        label=_("Attendees"),
        required=False,
        help_text=_("E-mail addresses separated by commas. Outlook sends them an invitation."),
    )
    weekly = forms.BooleanField(label=_("Repeat every week"), required=False)

    def __init__(self, *args, editing: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if editing:  # the pattern of a series is not edited here
            del self.fields["weekly"]

    def clean_attendees(self) -> list[str]:
        addresses = [part.strip() for part in self.cleaned_data["attendees"].split(",") if part.strip()]
        validate = forms.EmailField().clean
        for address in addresses:
            try:
                validate(address)
            except forms.ValidationError:
                raise forms.ValidationError(
                    _("“%(address)s” is not an e-mail address."), params={"address": address}
                ) from None
        return addresses
