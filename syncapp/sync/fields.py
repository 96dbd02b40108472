"""Field mapping between a Raynet activity and an Outlook event, and the normalized fingerprints.

A fingerprint is what a side looked like, reduced to the fields we sync and put
in one canonical form (UTC minutes, plain text with normalized whitespace,
lower-case e-mails, sorted sets). Its hash is stored on the EventLink at each
sync; a side changed when its hash differs. Volatile fields (changeKey,
rowInfo, HTML wrapping, whitespace) are not in it, so echoes of our own writes
never look like changes.
"""

from __future__ import annotations

import hashlib
import html
import json
import re
from datetime import UTC, date, datetime, time, timedelta
from html.parser import HTMLParser
from zoneinfo import ZoneInfo

TIME_BLOCKER_TITLE = "Time blocker"
PRIVATE_SENSITIVITIES = {"private", "confidential"}
DEFAULT_DURATION = timedelta(minutes=30)


# --- text -------------------------------------------------------------------------------------


class _TextExtractor(HTMLParser):
    BREAKS = {"br", "p", "div", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skip = 0

    def handle_starttag(self, tag, attrs) -> None:
        if tag in ("style", "script", "head", "title"):
            self.skip += 1
        elif tag in self.BREAKS:
            self.parts.append("\n")

    def handle_endtag(self, tag) -> None:
        if tag in ("style", "script", "head", "title"):
            self.skip = max(0, self.skip - 1)
        elif tag in self.BREAKS:
            self.parts.append("\n")

    def handle_data(self, data) -> None:
        if not self.skip:
            self.parts.append(data)


def html_to_text(value: str | None) -> str:
    if not value:
        return ""
    if "<" not in value and "&" not in value:
        return normalize_text(value)
    parser = _TextExtractor()
    parser.feed(value)
    parser.close()
    return normalize_text("".join(parser.parts))


def normalize_text(value: str | None) -> str:
    """Canonical text: \\n line ends, no trailing spaces, at most one blank line in a row, trimmed."""
    if not value:
        return ""
    value = value.replace("\r\n", "\n").replace("\r", "\n").replace("\xa0", " ")
    lines = [re.sub(r"[ \t]+", " ", line).strip() for line in value.split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def text_to_raynet_html(value: str) -> str:
    """Raynet descriptions are HTML; plain text is written escaped with <br> line breaks (round-trips exactly)."""
    return html.escape(value, quote=False).replace("\n", "<br>")


# --- time -------------------------------------------------------------------------------------


def minute(value: datetime | None) -> datetime | None:
    """Raynet keeps minutes only; both sides compare at that precision."""
    return value.astimezone(UTC).replace(second=0, microsecond=0) if value else None


def parse_graph_datetime(value: dict | None) -> datetime | None:
    """Graph's {"dateTime": "2026-01-01T10:00:00.0000000", "timeZone": "UTC"} (we always ask for UTC)."""
    if not value or not value.get("dateTime"):
        return None
    text = value["dateTime"]
    main, _, fraction = text.partition(".")
    parsed = datetime.fromisoformat(main)
    zone = value.get("timeZone") or "UTC"
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC if zone.upper() in ("UTC", "Z") else ZoneInfo(zone))
    return parsed.astimezone(UTC)


def graph_datetime(value: datetime) -> dict:
    return {"dateTime": value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S"), "timeZone": "UTC"}


def graph_date(value: date) -> dict:
    return {"dateTime": f"{value.isoformat()}T00:00:00", "timeZone": "UTC"}


# --- Outlook ------------------------------------------------------------------------------------


def outlook_is_private(event: dict) -> bool:
    return (event.get("sensitivity") or "normal").lower() in PRIVATE_SENSITIVITIES


def outlook_body_text(event: dict) -> str:
    """We ask for text bodies; an HTML one (the header was not honoured) is converted here."""
    body = event.get("body") or {}
    if (body.get("contentType") or "text").lower() == "html":
        return html_to_text(body.get("content"))
    return normalize_text(body.get("content"))


def outlook_attendee_emails(event: dict) -> list[str]:
    emails = {
        (attendee.get("emailAddress") or {}).get("address", "").strip().lower()
        for attendee in event.get("attendees") or []
        if attendee.get("type") != "resource"
    }
    return sorted(email for email in emails if email)


def outlook_organizer_email(event: dict) -> str:
    return ((event.get("organizer") or {}).get("emailAddress") or {}).get("address", "").strip().lower()


def outlook_times(event: dict) -> tuple[datetime, datetime]:
    start = parse_graph_datetime(event.get("start"))
    end = parse_graph_datetime(event.get("end")) or (start + DEFAULT_DURATION)
    return start, end


def outlook_fingerprint(event: dict, *, time_blocker: bool = False) -> dict:
    """What the Outlook event says, for the fields we sync. A time blocker keeps only its time."""
    start, end = outlook_times(event)
    fingerprint = {
        "start": minute(start).isoformat(),
        "end": minute(end).isoformat(),
        "all_day": bool(event.get("isAllDay")),
        "cancelled": bool(event.get("isCancelled")),
        "private": outlook_is_private(event),
    }
    if time_blocker:
        return fingerprint
    fingerprint.update(
        title=normalize_text(event.get("subject")),
        description=outlook_body_text(event),
        location=normalize_text((event.get("location") or {}).get("displayName")),
        attendees=outlook_attendee_emails(event),
    )
    return fingerprint


# --- Raynet -------------------------------------------------------------------------------------


def raynet_owner_id(activity: dict) -> int | None:
    owner = activity.get("owner")
    return owner.get("id") if isinstance(owner, dict) else owner


def raynet_participant_ids(activity: dict) -> list[int]:
    """Person ids of the participants other than the owner (Raynet lists the owner as a participant)."""
    owner_id = raynet_owner_id(activity)
    ids = {p.get("person") for p in activity.get("participants") or [] if p.get("person")}
    ids = {pid.get("id") if isinstance(pid, dict) else pid for pid in ids}
    return sorted(pid for pid in ids if pid and pid != owner_id)


def raynet_times(activity: dict) -> tuple[datetime, datetime]:
    start = activity.get("scheduledFrom")
    end = activity.get("scheduledTill") or (start + DEFAULT_DURATION if start else None)
    return start, end


def raynet_fingerprint(activity: dict) -> dict:
    start, end = raynet_times(activity)
    return {
        "title": normalize_text(activity.get("title")),
        "start": minute(start).isoformat() if start else "",
        "end": minute(end).isoformat() if end else "",
        "description": html_to_text(activity.get("description")),
        "location": normalize_text(activity.get("meetingPlace")),
        "participants": raynet_participant_ids(activity),
        "status": activity.get("status") or "",
    }


def fingerprint_hash(fingerprint: dict) -> str:
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()


# --- Outlook → Raynet ---------------------------------------------------------------------------


def all_day_bounds(event: dict, zone: ZoneInfo) -> tuple[datetime, datetime]:
    """An all-day event keeps its dates: midnight to midnight in the Raynet instance's zone."""
    start_date = date.fromisoformat(event["start"]["dateTime"][:10])
    end_date = date.fromisoformat(event["end"]["dateTime"][:10])
    return (
        datetime.combine(start_date, time(), zone).astimezone(UTC),
        datetime.combine(max(end_date, start_date + timedelta(days=1)), time(), zone).astimezone(UTC),
    )


def raynet_fields_from_outlook(event: dict, *, zone: ZoneInfo, time_blocker: bool) -> dict:
    """Raynet write fields (without participants) for an Outlook event."""
    start, end = all_day_bounds(event, zone) if event.get("isAllDay") else outlook_times(event)
    fields = {"scheduledFrom": minute(start), "scheduledTill": minute(end)}
    if time_blocker:
        fields.update(title=TIME_BLOCKER_TITLE, description="", meetingPlace="")
    else:
        fields.update(
            title=normalize_text(event.get("subject")) or "(no subject)",
            description=text_to_raynet_html(outlook_body_text(event)),
            meetingPlace=normalize_text((event.get("location") or {}).get("displayName")),
        )
    return fields


def participant_ops(activity: dict | None, wanted_person_ids: set[int]) -> list[dict]:
    """Raynet participant operations: no id = add, negative id = remove (the owner is never touched).

    A participant without its row id (list rows, the link's baseline) is there all the same: never added
    twice. Removing one takes the row id (the detail has it; the caller reads it when a removal is due).
    """
    owner_id = raynet_owner_id(activity) if activity else None
    present: set[int] = set()
    row_ids: dict[int, int] = {}
    for participant in (activity or {}).get("participants") or []:
        person = participant.get("person")
        person = person.get("id") if isinstance(person, dict) else person
        if person and person != owner_id:
            present.add(person)
            if participant.get("id"):
                row_ids[person] = participant["id"]
    ops = [{"id": -row_ids[pid]} for pid in sorted(present - wanted_person_ids) if pid in row_ids]
    ops += [{"person": pid} for pid in sorted(wanted_person_ids - present - {owner_id})]
    return ops


def has_row_ids(activity: dict) -> bool:
    """Whether each participant comes with its row id (the detail), which removing one needs."""
    return all("id" in participant for participant in activity.get("participants") or [])


def raynet_after_write(activity: dict | None, fields: dict, *, owner_id: int, wanted_person_ids: set[int]) -> dict:
    """The record as Raynet will hold it after our write: lets us store its hash without reading it back."""
    result = dict(activity or {"owner": {"id": owner_id}, "status": "SCHEDULED"})
    result.update({key: value for key, value in fields.items() if key != "participants"})
    result["participants"] = [{"person": pid} for pid in sorted(wanted_person_ids)]
    return result


# --- Raynet → Outlook ---------------------------------------------------------------------------


def outlook_fields_from_raynet(activity: dict, *, zone: ZoneInfo, keep_all_day: bool, time_only: bool) -> dict:
    """Graph event fields (without attendees) for a Raynet activity."""
    start, end = raynet_times(activity)
    fields: dict = {}
    if keep_all_day and _is_local_midnight(start, zone) and _is_local_midnight(end, zone):
        fields.update(
            isAllDay=True, start=graph_date(start.astimezone(zone).date()), end=graph_date(end.astimezone(zone).date())
        )
    else:
        fields.update(isAllDay=False, start=graph_datetime(start), end=graph_datetime(end))
    if not time_only:
        fields.update(
            subject=normalize_text(activity.get("title")),
            body={"contentType": "text", "content": html_to_text(activity.get("description"))},
            location={"displayName": normalize_text(activity.get("meetingPlace"))},
        )
    return fields


def _is_local_midnight(value: datetime | None, zone: ZoneInfo) -> bool:
    return value is not None and value.astimezone(zone).time() == time()


def graph_attendees(emails: list[str], names: dict[str, str] | None = None) -> list[dict]:
    names = names or {}
    return [
        {"type": "required", "emailAddress": {"address": email, "name": names.get(email, email)}} for email in emails
    ]
