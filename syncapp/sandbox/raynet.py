"""A stateful fake of the Raynet CRM REST API v2, as far as a calendar sync uses it.

It follows the "Checklist for the fake server" (§9) of /work/shared/reference/raynet-api.md and
pins every response shape to the examples of Raynet's own OpenAPI spec
(/work/shared/reference/raynet-openapi-calendar.json). Where the docs say UNCONFIRMED it takes the
stricter reading, so a client that works here does not depend on luck:
- PUT (create) drops the fields the create schema lacks (status, personal, meetingPlace, participants,
  customFields): reference §3 "Not in the create schema".
- List rows carry no `owner` and their participants no `id`, exactly as the list examples.
- Date-times have minute precision, also with `dateFormat=ISO8601` (reference §4, last bullet).

State is one JSON-able dict (ISO strings, string keys), so the HTTP front can keep it in PostgreSQL.
"""

from __future__ import annotations

import base64
import json
import re
import threading
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import unquote
from zoneinfo import ZoneInfo

from django.utils import timezone

from syncapp.sandbox.base import Outgoing, Sandbox, SandboxRequest, SandboxResponse, post_outgoing

ENTITIES = ("meeting", "event")
ENTITY_NAMES = {"meeting": "Meeting", "event": "Event"}
PRIORITIES = {"MINOR", "DEFAULT", "CRITICAL"}
STATUSES = {"NEW", "SCHEDULED", "COMPLETED", "CANCELLED"}
DATETIME_FIELDS = ("scheduledFrom", "scheduledTill", "completed")
REFERENCE_FIELDS = ("category", "company", "person", "lead", "businessCase", "offer", "salesOrder", "project")
# Create (PUT) schema, reference §3: status, personal, meetingPlace, participants and customFields are not in it.
CREATE_FIELDS = {
    "meeting": {"title", "priority", "owner", "activity", "securityLevel", "description", "solution", "tags"}
    | set(REFERENCE_FIELDS)
    | set(DATETIME_FIELDS),
    "event": {"title", "priority", "owner", "activity", "securityLevel", "description", "tags"}
    | set(REFERENCE_FIELDS)
    | set(DATETIME_FIELDS),
}
UPDATE_FIELDS = {
    entity: (fields - {"owner", "person"}) | {"status", "personal", "meetingPlace", "customFields", "participants"}
    for entity, fields in CREATE_FIELDS.items()
}
# Key order and key sets of the OpenAPI examples: list rows (GET /meeting/) and detail (GET /meeting/{id}/).
LIST_KEYS = {
    "meeting": "id title personal status priority category activity company person lead project businessCase "
    "offer salesOrder scheduledFrom scheduledTill completed description solution tags rowInfo.createdAt "
    "rowInfo.createdBy rowInfo.updatedAt rowInfo.updatedBy rowInfo.rowAccess rowInfo.rowState securityLevel "
    "_version customFields participants recurrence meetingPlace companyAddress".split(),
}
LIST_KEYS["event"] = [key for key in LIST_KEYS["meeting"] if key != "solution"]
DETAIL_KEYS = {
    "meeting": "id title category priority status personal owner company lead businessCase offer salesOrder "
    "project activity scheduledFrom scheduledTill completed description solution meetingPlace tags "
    "rowInfo.createdAt rowInfo.createdBy rowInfo.updatedAt rowInfo.updatedBy rowInfo.rowAccess "
    "rowInfo.rowState securityLevel extIds customFields participants recurrence".split(),
}
DETAIL_KEYS["event"] = [key for key in DETAIL_KEYS["meeting"] if key != "solution"]
PERSON_LIST_KEYS = (
    "id titleBefore firstName lastName titleAfter primaryRelationship owner contactInfo privateAddress category "
    "personClassification1 personClassification2 personClassification3 salutation birthday language "
    "maritalStatus gender companyAddress customFields rowInfo.createdAt rowInfo.createdBy rowInfo.updatedAt "
    "rowInfo.updatedBy rowInfo.rowAccess rowInfo.rowState securityLevel notice activeUserAccount keyman tags "
    "_version inlineGdpr".split()
)
PERSON_DETAIL_KEYS = (
    "id titleBefore firstName lastName titleAfter owner category primaryRelationship personClassification1 "
    "personClassification2 personClassification3 salutation birthday language maritalStatus gender contactInfo "
    "socialNetworkContact privateAddress customFields rowInfo.createdAt rowInfo.updatedAt rowInfo.rowAccess "
    "rowInfo.rowState securityLevel notice photo activeUserAccount tags _version attachments relationships "
    "inlineGdpr keyman originLead".split()
)
USER_LIST_KEYS = "id _version username person userRole rowInfo.createdAt rowInfo.createdBy rowInfo.updatedAt "
USER_LIST_KEYS = (USER_LIST_KEYS + "rowInfo.updatedBy").split()
USER_DETAIL_KEYS = (
    "id _version person username email2 userRole personRecordFilter listExportPermission detailReportPermission "
    "googleContactsPermission bulkOperationPermission codelistEditPermission editOnlyOwnedRecordsPermission "
    "onlyLockRecordsPermission deletePermissionConfig twoFactorEnabled timezone dateFormat timeFormat "
    "startWeekDay securityLevels securityProfile rowInfo.createdAt rowInfo.createdBy rowInfo.updatedAt "
    "rowInfo.updatedBy".split()
)
ENTITY_PATH = "(meeting|event)"
# (method, path below /api/v2/, handler); every documented path ends with "/" (reference §2).
ROUTES = [
    ("GET", f"{ENTITY_PATH}/", "_list_activities"),
    ("PUT", f"{ENTITY_PATH}/", "_create_activity"),
    ("GET", rf"{ENTITY_PATH}/(\d+)/", "_get_activity"),
    ("POST", rf"{ENTITY_PATH}/(\d+)/", "_update_activity"),
    ("DELETE", rf"{ENTITY_PATH}/(\d+)/", "_delete_activity"),
    ("PUT", rf"{ENTITY_PATH}/(\d+)/extId/", "_add_ext_id"),
    ("DELETE", rf"{ENTITY_PATH}/(\d+)/extId/([^/]+)/?", "_remove_ext_id"),
    ("GET", f"{ENTITY_PATH}/ext/(.+)/", "_get_by_ext_id"),
    ("GET", "activity/", "_list_all_activities"),
    ("GET", "userAccount/", "_list_users"),
    ("GET", r"userAccount/(\d+)/", "_get_user"),
    ("GET", "person/", "_list_persons"),
    ("GET", r"person/(\d+)/", "_get_person"),
    ("GET", "webhook/", "_list_webhooks"),
    ("PUT", "webhook/", "_add_webhook"),
    ("POST", "webhook/technicalContact/", "_set_technical_contacts"),
    ("DELETE", "webhook/([0-9a-f]+)/", "_remove_webhook"),
]
OPERATORS = {"EQ", "EQ_OR_NULL", "NE", "NE_OR_NULL", "LT", "LE", "GT", "GE", "LIKE", "LIKE_NOCASE", "IN", "NOT_IN"}
LIST_PARAMETERS = {"offset", "limit", "sortColumn", "sortDirection", "dateFormat", "view", "fulltext"}
FILTER_KEY = re.compile(r"^(?P<column>[^\[\]]+)(?:\[(?P<op>[A-Z_]+)\])?$")
MAX_LIMIT = 1000  # reference §4: "The largest page is 1000"
DEFAULT_LIMIT = 20  # UNCONFIRMED; S6 says 20
FAILED_LOGINS_BEFORE_BLOCK = 20  # reference §1: more than 20 wrong credentials block the IP for 60 minutes
REQUEST_LIMIT_BODY = {
    "type": "RequestLimitReached",
    "message": "API request limit reached. See the X-RateLimit-* headers and check out the API documentation "
    "for more details.",
}
UI_SOURCE = {"name": "user", "description": "browser"}
WEBHOOK_EVENTS = ("record.created", "record.updated", "record.deleted")
ACCESS_DENIED_BODY = {
    "message": "AttributeAccessDeniedException",
    "translatedMessage": "Nemáte dostatečná oprávnění pro tuto operaci.",
}


class BadRequest(Exception):
    """Answered as 400 with Raynet's error body."""


class NotFound(Exception):
    """Answered as 404."""


@dataclass
class ApiCall:
    """One authenticated request, with the caller's zone and the date format it asked for."""

    request: SandboxRequest
    user: dict
    zone: ZoneInfo
    iso: bool  # dateFormat=ISO8601

    def body(self) -> dict:
        return self.request.json() or {}


# --- date-times --------------------------------------------------------------------------------------


def to_minute(instant: datetime) -> datetime:
    return instant.replace(second=0, microsecond=0)


def parse_raynet_datetime(value: Any, zone: ZoneInfo) -> datetime | None:
    """Raynet accepts `yyyy-MM-dd HH:mm` in the user's zone and ISO 8601 (reference §2, Dates and times)."""
    if value in (None, ""):
        return None
    if isinstance(value, datetime):
        parsed = value
    else:
        try:
            parsed = datetime.fromisoformat(str(value))
        except ValueError:
            raise BadRequest(f"Invalid date-time value: {value}") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=zone)
    return parsed.astimezone(UTC)


def render_datetime(stored: str | None, zone: ZoneInfo, iso: bool) -> str | None:
    if not stored:
        return None
    local = to_minute(datetime.fromisoformat(stored)).astimezone(zone)
    return local.isoformat(timespec="milliseconds") if iso else local.strftime("%Y-%m-%d %H:%M")


def zone_enum(zone_name: str) -> str:
    """`Europe/Prague` → `EUROPE_PRAGUE`, as GET /userAccount/{id}/ shows it."""
    return zone_name.upper().replace("/", "_")


# --- filters -------------------------------------------------------------------------------------------


def like_pattern(raw: str, nocase: bool) -> re.Pattern:
    """`%` is the only wildcard the docs name (reference §4)."""
    return re.compile(".*".join(re.escape(part) for part in raw.split("%")), re.IGNORECASE if nocase else 0)


def matches(value: Any, op: str, raw: str, convert: Callable[[str], Any]) -> bool:
    """One `column[OP]=raw` filter against a record's value; an empty EQ/NE value tests for empty."""
    if op in ("EQ", "NE") and raw == "":
        return (value in (None, "", [])) == (op == "EQ")
    if op in ("EQ_OR_NULL", "NE_OR_NULL") and value is None:
        return True
    if op in ("IN", "NOT_IN"):
        found = value in {convert(part.strip()) for part in raw.split(",")}
        return found == (op == "IN")
    if value is None:
        return op in ("NE",)
    if op in ("LIKE", "LIKE_NOCASE"):
        return bool(like_pattern(raw, op == "LIKE_NOCASE").fullmatch(str(value)))
    wanted = convert(raw)
    return {
        "EQ": value == wanted,
        "EQ_OR_NULL": value == wanted,
        "NE": value != wanted,
        "NE_OR_NULL": value != wanted,
        "LT": value < wanted,
        "LE": value <= wanted,
        "GT": value > wanted,
        "GE": value >= wanted,
    }[op]


def as_int(raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise BadRequest(f"Invalid number: {raw}") from None


class RaynetSandbox(Sandbox):
    """The fake Raynet. Tests drive it like a person in Raynet's UI (`add_user`, `ui_create_activity`, ...)."""

    name = "raynet"

    def __init__(
        self,
        state: dict | None = None,
        *,
        instance: str = "sandbox",
        daily_limit: int = 24000,
        max_connections: int = 4,
    ) -> None:
        super().__init__(state)
        for key, value in self.initial_state().items():  # state stored by an older version lacks new keys
            self.state.setdefault(key, value)
        self.state.setdefault("instance", instance)
        self.state.setdefault("daily_limit", daily_limit)
        self.state.setdefault("max_connections", max_connections)
        # In-flight requests are a property of this process, not of the stored state.
        self.in_flight = 0
        self.peak_in_flight = 0
        self.concurrency_rejections = 0
        self._in_flight_lock = threading.Lock()

    def initial_state(self) -> dict:
        return {
            "now": None,  # ISO instant; None = the real clock
            "budget": {"day": "", "used": 0},
            "budget_status": 429,  # 503 = the 2021 docs' answer (reference §6)
            "failed_logins": 0,
            "blocked_until": None,
            "next_id": 1,
            "api_keys": {},
            "api_key_names": {},
            "users": {},
            "persons": {},
            "records": {entity: {} for entity in ENTITIES},
            "denials": [],
            "webhooks": [],
            "technical_contacts": [],
            "webhook_outbox": [],
        }

    # --- the test clock ------------------------------------------------------------------------
    def now(self) -> datetime:
        stored = self.state.get("now")
        return datetime.fromisoformat(stored) if stored else timezone.now()

    def set_now(self, instant: datetime) -> None:
        self.state["now"] = instant.astimezone(UTC).isoformat()

    def advance(self, delta: timedelta) -> None:
        self.set_now(self.now() + delta)

    def _now_iso(self) -> str:
        return self.now().astimezone(UTC).isoformat()

    def _new_id(self) -> int:
        new_id = self.state["next_id"]
        self.state["next_id"] += 1
        return new_id

    # --- configuration and faults ----------------------------------------------------------------
    def set_daily_limit(self, limit: int, *, used: int | None = None) -> None:
        self.state["daily_limit"] = limit
        if used is not None:
            self._budget()["used"] = used

    def deny_permission(
        self, *, user: str | None = None, method: str | None = None, path: str | None = None, times: int | None = None
    ) -> None:
        """Matching requests get Raynet's permission error: 500 AttributeAccessDeniedException (reference §6)."""
        self.state["denials"].append({"user": user, "method": method, "path": path, "times": times})

    # --- acting as a person in Raynet's UI (no request counted) ---------------------------------
    def add_person(self, email: str, full_name: str) -> int:
        person_id = self._new_id()
        first, _, last = full_name.partition(" ")
        self.state["persons"][str(person_id)] = {
            "id": person_id,
            "firstName": first,
            "lastName": last,
            "email": email,
            "email2": None,
            "userAccount": None,
            "createdAt": self._now_iso(),
            "updatedAt": self._now_iso(),
            "_version": 1,
        }
        return person_id

    def add_user(
        self,
        email: str,
        full_name: str,
        *,
        api_key: str | None = None,
        zone: str = "Europe/Prague",
        role: str = "ADMIN",
        api_key_name: str = "Outlook sync",
    ) -> tuple[int, int]:
        """A user account (login `email`) and its person; `api_key` (named `api_key_name`) lets it call the API."""
        person_id = self.add_person(email, full_name)
        user_id = self._new_id()
        self.state["users"][str(user_id)] = {
            "id": user_id,
            "username": email,
            "email2": None,
            "person": person_id,
            "userRole": role,
            "timezone": zone,
            "createdAt": self._now_iso(),
            "updatedAt": self._now_iso(),
            "_version": 1,
        }
        self.state["persons"][str(person_id)]["userAccount"] = user_id
        if api_key:
            self.state["api_keys"][email] = api_key
            self.state["api_key_names"][email] = api_key_name
        return user_id, person_id

    def ui_create_activity(
        self, entity: str, owner_person_id: int, title: str, start: datetime, end: datetime, **fields: Any
    ) -> int:
        """`fields` in stored form; `participants` may be a list of person ids; date-times may be datetimes."""
        participants = fields.pop("participants", [])
        author = self._user_of(owner_person_id)
        record = self._new_record(owner_person_id, author)
        record.update(title=title, status="SCHEDULED")
        self._set_ui_fields(record, {"scheduledFrom": start, "scheduledTill": end, **fields})
        for person_id in participants:
            record["participants"].append(self._participant(person_id))
        self.state["records"][entity][str(record["id"])] = record
        self._emit("record.created", entity, record, author=author, source=UI_SOURCE)
        return record["id"]

    def ui_edit_activity(self, entity: str, activity_id: int, **fields: Any) -> None:
        record = self._record(entity, activity_id)
        if "participants" in fields:
            wanted = fields.pop("participants")
            record["participants"] = [p for p in record["participants"] if p["owner"]]
            record["participants"] += [self._participant(person_id) for person_id in wanted]
        self._set_ui_fields(record, fields)
        self._bump(record, self._user_of(record["owner"]))
        self._emit("record.updated", entity, record, author=record["updatedBy"], source=UI_SOURCE)

    def ui_complete_activity(self, entity: str, activity_id: int) -> None:
        self.ui_edit_activity(entity, activity_id, status="COMPLETED", completed=self.now())

    def ui_cancel_activity(self, entity: str, activity_id: int) -> None:
        self.ui_edit_activity(entity, activity_id, status="CANCELLED", completed=self.now())

    def ui_delete_activity(self, entity: str, activity_id: int) -> None:
        record = self.state["records"][entity].pop(str(activity_id))
        self._emit("record.deleted", entity, record, author=self._user_of(record["owner"]), source=UI_SOURCE)

    # --- readers for tests -------------------------------------------------------------------------
    def activity(self, entity: str, activity_id: int) -> dict | None:
        return self.state["records"][entity].get(str(activity_id))

    def activities(self, entity: str) -> list[dict]:
        return list(self.state["records"][entity].values())

    # --- records -----------------------------------------------------------------------------------
    def _record(self, entity: str, activity_id: int | str) -> dict:
        return self.state["records"][entity][str(activity_id)]

    def _user_of(self, person_id: int) -> str:
        person = self.state["persons"].get(str(person_id)) or {}
        return person.get("email") or "(unknown)"

    def person_name(self, person_id: int | None) -> str | None:
        person = self.state["persons"].get(str(person_id))
        return f"{person['firstName']} {person['lastName']}".strip() if person else None

    def _new_record(self, owner_id: int, author: str) -> dict:
        """A new activity, not stored yet (the caller stores it once every field is valid)."""
        record_id = self._new_id()
        return {
            "id": record_id,
            "title": "",
            "priority": "DEFAULT",
            "status": "NEW",
            "personal": False,
            "owner": owner_id,
            **{name: None for name in REFERENCE_FIELDS + DATETIME_FIELDS},
            "activity": None,
            "securityLevel": 1,
            "description": None,
            "solution": None,
            "meetingPlace": None,
            "tags": [],
            "customFields": {},
            # Raynet lists the owner as a participant too (see the detail example in the OpenAPI spec).
            "participants": [{**self._participant(owner_id), "owner": True, "role": "FROM"}],
            "extIds": [],
            "_version": 1,
            "createdAt": self._now_iso(),
            "createdBy": author,
            "updatedAt": self._now_iso(),
            "updatedBy": author,
            "rowState": None,
        }

    def _participant(self, person_id: int | None, **fields: Any) -> dict:
        return {
            "id": self._new_id(),
            "owner": bool(fields.get("owner", False)),
            "role": fields.get("role"),
            "person": person_id,
            "company": fields.get("company"),
            "lead": fields.get("lead"),
        }

    def _set_ui_fields(self, record: dict, fields: dict) -> None:
        for name, value in fields.items():
            if name in DATETIME_FIELDS:
                instant = parse_raynet_datetime(value, self._zone_of(record["owner"]))
                value = to_minute(instant).isoformat() if instant else None
            record[name] = value

    def _bump(self, record: dict, author: str) -> None:
        record["updatedAt"] = self._now_iso()
        record["updatedBy"] = author
        record["_version"] += 1

    def _zone_of(self, person_id: int | None) -> ZoneInfo:
        for user in self.state["users"].values():
            if user["person"] == person_id:
                return ZoneInfo(user["timezone"])
        return ZoneInfo("Europe/Prague")

    # --- rendering ---------------------------------------------------------------------------------
    def _reference(self, name: str, value: int | None) -> dict | None:
        if value is None:
            return None
        if name == "category":
            return {"id": value, "value": f"Category {value}"}
        if name in ("person", "owner"):
            return {"id": value, "fullName": self.person_name(value)}
        if name in ("businessCase", "offer", "salesOrder"):
            return {"id": value, "code": f"{name}-{value}", "name": f"{name} {value}"}
        if name == "securityLevel":
            return {"id": value, "name": "Sdílená" if value == 1 else f"Level {value}"}
        return {"id": value, "name": f"{name} {value}"}

    def _render_participant(self, participant: dict, *, with_id: bool) -> dict:
        rendered = {key: participant[key] for key in ("owner", "role")}
        rendered["name"] = self.person_name(participant["person"])
        rendered.update({key: participant[key] for key in ("person", "company", "lead")})
        return {"id": participant["id"], **rendered} if with_id else rendered

    def _render_activity(self, entity: str, record: dict, *, detail: bool, zone: ZoneInfo, iso: bool) -> dict:
        values = {
            **record,
            **{name: self._reference(name, record[name]) for name in (*REFERENCE_FIELDS, "securityLevel", "owner")},
            **{name: render_datetime(record[name], zone, iso) for name in DATETIME_FIELDS},
            "activity": {"id": record["activity"]} if record["activity"] else None,
            "rowInfo.createdAt": render_datetime(record["createdAt"], zone, iso),
            "rowInfo.createdBy": record["createdBy"],
            "rowInfo.updatedAt": render_datetime(record["updatedAt"], zone, iso),
            "rowInfo.updatedBy": record["updatedBy"],
            "rowInfo.rowAccess": None,
            "rowInfo.rowState": record["rowState"],
            "customFields": record["customFields"] or None,
            "participants": [self._render_participant(p, with_id=detail) for p in record["participants"]],
            "recurrence": None,  # recurrence is not modelled (reference §3: read-only, UNCONFIRMED)
            "companyAddress": None,
            "extIds": list(record["extIds"]) or None,
        }
        return {key: values[key] for key in (DETAIL_KEYS if detail else LIST_KEYS)[entity]}

    def _render_row_info(self, record: dict, zone: ZoneInfo, iso: bool) -> dict:
        """`view=rowInfo`: "only status fields (created, modified, version…)"; the exact shape is UNCONFIRMED."""
        return {
            "id": record["id"],
            "_version": record["_version"],
            "rowInfo.createdAt": render_datetime(record["createdAt"], zone, iso),
            "rowInfo.createdBy": record.get("createdBy"),
            "rowInfo.updatedAt": render_datetime(record["updatedAt"], zone, iso),
            "rowInfo.updatedBy": record.get("updatedBy"),
            "rowInfo.rowAccess": None,
            "rowInfo.rowState": record.get("rowState"),
        }

    def _render_person(self, person: dict, *, detail: bool, zone: ZoneInfo, iso: bool) -> dict:
        values = dict.fromkeys(PERSON_DETAIL_KEYS + PERSON_LIST_KEYS)
        values.update(
            {
                "id": person["id"],
                "firstName": person["firstName"],
                "lastName": person["lastName"],
                "contactInfo": {
                    "email": person["email"],
                    "email2": person["email2"],
                    "tel1": None,
                    "tel1Type": None,
                    "tel2": None,
                    "tel2Type": None,
                    "www": None,
                    "otherContact": None,
                },
                "activeUserAccount": person["userAccount"] is not None,
                "keyman": False,
                "tags": [],
                "attachments": [],
                "relationships": [],
                "inlineGdpr": [],
                "_version": person["_version"],
                "securityLevel": self._reference("securityLevel", 1),
                "rowInfo.createdAt": render_datetime(person["createdAt"], zone, iso),
                "rowInfo.updatedAt": render_datetime(person["updatedAt"], zone, iso),
            }
        )
        return {key: values[key] for key in (PERSON_DETAIL_KEYS if detail else PERSON_LIST_KEYS)}

    def _render_user(self, user: dict, *, detail: bool, zone: ZoneInfo, iso: bool) -> dict:
        values = dict.fromkeys(USER_DETAIL_KEYS)
        values.update(
            {
                "id": user["id"],
                "_version": user["_version"],
                "username": user["username"],
                "email2": user["email2"],
                "person": self._reference("person", user["person"]),
                "userRole": user["userRole"],
                "timezone": zone_enum(user["timezone"]),
                "dateFormat": "DAY_MONTH_YEAR",
                "timeFormat": "HOUR24",
                "startWeekDay": "MONDAY",
                "twoFactorEnabled": False,
                "securityLevels": [self._reference("securityLevel", 1)],
                "rowInfo.createdAt": render_datetime(user["createdAt"], zone, iso),
                "rowInfo.createdBy": "(unknown)",
                "rowInfo.updatedAt": render_datetime(user["updatedAt"], zone, iso),
                "rowInfo.updatedBy": "(unknown)",
            }
        )
        values.update(dict.fromkeys([key for key in USER_DETAIL_KEYS if key.endswith("Permission")], True))
        return {key: values[key] for key in (USER_DETAIL_KEYS if detail else USER_LIST_KEYS)}

    # --- the request pipeline ------------------------------------------------------------------------
    def handle(self, request: SandboxRequest) -> SandboxResponse:
        """Count connections in flight (a 5th gets 429, reference §6) and put X-Ratelimit-* on every answer."""
        with self._in_flight_lock:
            rejected = self.in_flight >= self.state["max_connections"]
            if rejected:
                self.concurrency_rejections += 1
            else:
                self.in_flight += 1
                self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        if rejected:
            with self.lock:
                self.state["calls"].append([request.method, request.path])
                body = {"message": f"Too many concurrent connections (limit {self.state['max_connections']})."}
                return self._with_rate_limit_headers(SandboxResponse(429, body))
        try:
            response = super().handle(request)
        finally:
            with self._in_flight_lock:
                self.in_flight -= 1
        with self.lock:
            return self._with_rate_limit_headers(response)

    def _budget(self) -> dict:
        today = self.now().astimezone(UTC).date().isoformat()
        if self.state["budget"]["day"] != today:  # the daily limit counts midnight to midnight UTC
            self.state["budget"] = {"day": today, "used": 0}
        return self.state["budget"]

    def _reset_timestamp(self) -> int:
        tomorrow = self.now().astimezone(UTC).date() + timedelta(days=1)
        return int(datetime(tomorrow.year, tomorrow.month, tomorrow.day, tzinfo=UTC).timestamp())

    def _with_rate_limit_headers(self, response: SandboxResponse) -> SandboxResponse:
        remaining = max(0, self.state["daily_limit"] - self._budget()["used"])
        response.headers.setdefault("X-Ratelimit-Limit", str(self.state["daily_limit"]))
        response.headers.setdefault("X-Ratelimit-Remaining", str(remaining))
        response.headers.setdefault("X-Ratelimit-Reset", str(self._reset_timestamp()))
        return response

    def dispatch(self, request: SandboxRequest) -> SandboxResponse:
        user, refusal = self._authenticate(request)
        if refusal:
            return refusal
        budget = self._budget()
        if budget["used"] >= self.state["daily_limit"]:
            body = dict(REQUEST_LIMIT_BODY)
            if self.state["budget_status"] == 503:
                body["documentation_url"] = "https://app.raynet.cz/api/doc/"
            return SandboxResponse(self.state["budget_status"], body)
        budget["used"] += 1
        if self._denied(user, request):
            return SandboxResponse(500, dict(ACCESS_DENIED_BODY))
        try:
            return self._route(request, user)
        except BadRequest as error:
            return SandboxResponse(400, {"message": str(error)})
        except NotFound as error:
            return SandboxResponse(404, {"message": str(error)})

    def _authenticate(self, request: SandboxRequest) -> tuple[dict | None, SandboxResponse | None]:
        """Basic auth with the login e-mail and an API key, plus X-Instance-Name (reference §1)."""
        blocked_until = self.state["blocked_until"]
        if blocked_until and datetime.fromisoformat(blocked_until) > self.now():
            message = "Too many failed login attempts: this IP address is blocked for 60 minutes."
            return None, SandboxResponse(403, {"message": message})
        username, key = self._basic_credentials(request.header("Authorization"))
        user = next((u for u in self.state["users"].values() if u["username"] == username), None)
        if (
            user is None
            or not key
            or self.state["api_keys"].get(username) != key
            or request.header("X-Instance-Name") != self.state["instance"]
        ):
            self.state["failed_logins"] += 1
            if self.state["failed_logins"] > FAILED_LOGINS_BEFORE_BLOCK:
                self.state["blocked_until"] = (self.now() + timedelta(minutes=60)).isoformat()
            return None, SandboxResponse(401, {"message": "Unauthorized: invalid credentials or instance name."})
        return user, None

    @staticmethod
    def _basic_credentials(header: str) -> tuple[str, str]:
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            return "", ""
        try:
            username, _, key = base64.b64decode(encoded).decode().partition(":")
        except ValueError:
            return "", ""
        return username, key

    def _denied(self, user: dict, request: SandboxRequest) -> bool:
        for denial in self.state["denials"]:
            if denial["user"] and denial["user"] != user["username"]:
                continue
            if denial["method"] and denial["method"] != request.method:
                continue
            if denial["path"] and not re.search(denial["path"], request.path):
                continue
            if denial["times"] is not None:
                denial["times"] -= 1
                if denial["times"] <= 0:
                    self.state["denials"].remove(denial)
            return True
        return False

    def _route(self, request: SandboxRequest, user: dict) -> SandboxResponse:
        call = ApiCall(request, user, ZoneInfo(user["timezone"]), request.arg("dateFormat") == "ISO8601")
        for method, pattern, handler in ROUTES:
            if method == request.method and (match := re.fullmatch(pattern, request.path)):
                return getattr(self, handler)(call, *match.groups())
        raise NotFound(f"No endpoint {request.method} /{request.path}")

    @staticmethod
    def _detail(data: dict) -> SandboxResponse:
        return SandboxResponse(200, {"success": "true", "data": data})  # detail: the string "true" (§2)

    @staticmethod
    def _list(total: int, data: list[dict], *, success: bool | str = True) -> SandboxResponse:
        return SandboxResponse(200, {"success": success, "totalCount": total, "data": data})

    def _existing(self, table: dict, key: str, what: str) -> dict:
        if key not in table:
            raise NotFound(f"{what} with id {key} was not found")
        return table[key]

    def _existing_activity(self, entity: str, activity_id: str) -> dict:
        return self._existing(self.state["records"][entity], activity_id, entity)

    # --- details -----------------------------------------------------------------------------------------
    def _get_activity(self, call: ApiCall, entity: str, activity_id: str) -> SandboxResponse:
        record = self._existing_activity(entity, activity_id)
        return self._detail(self._render_activity(entity, record, detail=True, zone=call.zone, iso=call.iso))

    def _get_by_ext_id(self, call: ApiCall, entity: str, ext_id: str) -> SandboxResponse:
        record = self._find_by_ext_id(entity, unquote(ext_id))
        if record is None:
            raise NotFound(f"{entity} with extId {unquote(ext_id)} was not found")
        return self._detail(self._render_activity(entity, record, detail=True, zone=call.zone, iso=call.iso))

    def _get_user(self, call: ApiCall, user_id: str) -> SandboxResponse:
        user = self._existing(self.state["users"], user_id, "userAccount")
        return self._detail(self._render_user(user, detail=True, zone=call.zone, iso=call.iso))

    def _get_person(self, call: ApiCall, person_id: str) -> SandboxResponse:
        person = self._existing(self.state["persons"], person_id, "person")
        return self._detail(self._render_person(person, detail=True, zone=call.zone, iso=call.iso))

    # --- lists -------------------------------------------------------------------------------------------
    def _activity_columns(self, zone: ZoneInfo) -> dict[str, tuple[Callable[[dict], Any], Callable[[str], Any]]]:
        def instant(name: str) -> Callable[[dict], Any]:
            return lambda r: to_minute(datetime.fromisoformat(r[name])) if r[name] else None

        def as_instant(raw: str) -> datetime | None:
            value = parse_raynet_datetime(raw, zone)
            return to_minute(value) if value else None

        # rowInfo.lastModifiedAt is "created or updated"; all date filters have minute precision (§4).
        return {
            "id": (lambda r: r["id"], as_int),
            "title": (lambda r: r["title"], str),
            "status": (lambda r: r["status"], str),
            "owner-id": (lambda r: r["owner"], as_int),
            "category-id": (lambda r: r["category"], as_int),
            "businessCase": (lambda r: r["businessCase"], as_int),
            "scheduledFrom": (instant("scheduledFrom"), as_instant),
            "scheduledTill": (instant("scheduledTill"), as_instant),
            "completed": (instant("completed"), as_instant),
            "rowInfo.createdAt": (instant("createdAt"), as_instant),
            "rowInfo.updatedAt": (instant("updatedAt"), as_instant),
            "rowInfo.lastModifiedAt": (instant("updatedAt"), as_instant),
        }

    def _activity_predicates(self) -> dict[str, Callable[[dict, str], bool]]:
        """Filters that take a plain value and no operator (reference §4)."""
        return {
            "personFilter": lambda r, raw: as_int(raw) in {p["person"] for p in r["participants"]},
            "companyContextFilter": lambda r, raw: (
                as_int(raw) in {r["company"], *(p["company"] for p in r["participants"])}
            ),
            "leadContextFilter": lambda r, raw: as_int(raw) in {r["lead"], *(p["lead"] for p in r["participants"])},
            "tags": lambda r, raw: bool({t.strip() for t in raw.split(",")} & set(r["tags"])),
            "fulltext": lambda r, raw: raw.lower() in f"{r['title']} {r['description'] or ''}".lower(),
        }

    def _filtered(
        self,
        rows: Iterable[dict],
        request: SandboxRequest,
        columns: dict[str, tuple[Callable[[dict], Any], Callable[[str], Any]]],
        predicates: dict[str, Callable[[dict, str], bool]],
    ) -> list[dict]:
        rows = list(rows)
        for key, values in request.query.items():
            if key in LIST_PARAMETERS and key not in predicates:
                continue
            parsed = FILTER_KEY.match(key)
            column, op = (parsed["column"], parsed["op"] or "EQ") if parsed else (key, "EQ")
            if column in predicates and (parsed and not parsed["op"]):
                rows = [row for row in rows if all(predicates[column](row, raw) for raw in values)]
                continue
            if column not in columns:
                raise BadRequest(f"Unsupported filter column {column}")
            if op not in OPERATORS:
                raise BadRequest(f"Unsupported filter operator {op} for column {column}")
            getter, convert = columns[column]
            rows = [row for row in rows if all(matches(getter(row), op, raw, convert) for raw in values)]
        return rows

    def _page(
        self, rows: list[dict], request: SandboxRequest, sort_columns: dict[str, Callable[[dict], Any]]
    ) -> tuple[int, list[dict]]:
        sort_column = request.arg("sortColumn")
        if sort_column is not None and sort_column not in sort_columns:
            raise BadRequest(f"Unsupported sort column {sort_column}")
        key = sort_columns[sort_column] if sort_column else (lambda row: row["id"])
        rows.sort(key=lambda row: (key(row) is None, key(row) or 0), reverse=request.arg("sortDirection") == "DESC")
        offset = as_int(request.arg("offset") or "0")
        limit = min(as_int(request.arg("limit") or str(DEFAULT_LIMIT)), MAX_LIMIT)
        return len(rows), rows[offset : offset + limit]

    def _activity_sort_columns(self) -> dict[str, Callable[[dict], Any]]:
        columns = {name: (lambda n: lambda r: r[n])(name) for name in ("id", "title", "status", *DATETIME_FIELDS)}
        columns.update(
            {
                "rowInfo.createdAt": lambda r: r["createdAt"],
                "rowInfo.updatedAt": lambda r: r["updatedAt"],
                "rowInfo.lastModifiedAt": lambda r: r["updatedAt"],
                "owner": lambda r: r["owner"],
                "category": lambda r: r["category"],
                "tags": lambda r: ",".join(r["tags"]),
            }
        )
        return columns

    def _list_activities(self, call: ApiCall, entity: str) -> SandboxResponse:
        records = self.state["records"][entity].values()
        rows = self._filtered(records, call.request, self._activity_columns(call.zone), self._activity_predicates())
        total, page = self._page(rows, call.request, self._activity_sort_columns())
        if call.request.arg("view") == "rowInfo":
            return self._list(total, [self._render_row_info(record, call.zone, call.iso) for record in page])
        data = [self._render_activity(entity, record, detail=False, zone=call.zone, iso=call.iso) for record in page]
        return self._list(total, data)  # list: the boolean true (reference §2)

    def _list_all_activities(self, call: ApiCall) -> SandboxResponse:
        """GET /activity/: every type, read-only, each row with `_entityName` (reference §3)."""
        entity_of = {r["id"]: entity for entity in ENTITIES for r in self.state["records"][entity].values()}
        records = [r for entity in ENTITIES for r in self.state["records"][entity].values()]
        rows = self._filtered(records, call.request, self._activity_columns(call.zone), self._activity_predicates())
        total, page = self._page(rows, call.request, self._activity_sort_columns())
        data = [
            {
                "_entityName": ENTITY_NAMES[entity_of[r["id"]]],
                **self._render_activity(entity_of[r["id"]], r, detail=False, zone=call.zone, iso=call.iso),
            }
            for r in page
        ]
        return self._list(total, data)

    def _list_users(self, call: ApiCall) -> SandboxResponse:
        columns = {
            "id": (lambda u: u["id"], as_int),
            "username": (lambda u: u["username"], str),
            "userRole": (lambda u: u["userRole"], str),
        }
        sort_columns = {"username": lambda u: u["username"], "userRole": lambda u: u["userRole"]}  # the spec's enum
        rows = self._filtered(self.state["users"].values(), call.request, columns, {})
        total, page = self._page(rows, call.request, sort_columns)
        data = [self._render_user(user, detail=False, zone=call.zone, iso=call.iso) for user in page]
        return self._list(total, data, success="true")  # a string here, as the example

    def _list_persons(self, call: ApiCall) -> SandboxResponse:
        columns = {
            "contactInfo.email": (lambda p: p["email"], str),
            "contactInfo.email2": (lambda p: p["email2"], str),
            "userAccount-id": (lambda p: p["userAccount"], as_int),
            "firstName": (lambda p: p["firstName"], str),
            "lastName": (lambda p: p["lastName"], str),
        }
        sort_columns = {name: (lambda n: lambda p: p[n])(name) for name in ("id", "firstName", "lastName")}
        rows = self._filtered(self.state["persons"].values(), call.request, columns, {})
        total, page = self._page(rows, call.request, sort_columns)
        data = [self._render_person(person, detail=False, zone=call.zone, iso=call.iso) for person in page]
        return self._list(total, data, success="true")  # a string here, as the example

    # --- writes ------------------------------------------------------------------------------------------
    def _create_activity(self, call: ApiCall, entity: str) -> SandboxResponse:
        body, user = call.body(), call.user
        missing = [name for name in ("title", "priority", "owner") if body.get(name) in (None, "")]
        if missing:
            raise BadRequest(f"Missing required field(s): {', '.join(missing)}")
        if str(body["owner"]) not in self.state["persons"]:
            raise BadRequest(f"Person with id {body['owner']} was not found")
        record = self._new_record(int(body["owner"]), user["username"])
        fields = {name: value for name, value in body.items() if name in CREATE_FIELDS[entity] - {"owner"}}
        self._apply_fields(record, fields, call.zone)
        if record["person"]:  # "ID of the contact that is a participant of the meeting" (create schema)
            record["participants"].append(self._participant(record["person"]))
        record["status"] = "SCHEDULED" if record["scheduledFrom"] else "NEW"  # UNCONFIRMED (reference §3)
        self.state["records"][entity][str(record["id"])] = record
        self._emit("record.created", entity, record, author=user["username"], source=self._api_source(user))
        return SandboxResponse(201, {"success": True, "data": {"id": record["id"]}})

    def _update_activity(self, call: ApiCall, entity: str, activity_id: str) -> SandboxResponse:
        body, user = call.body(), call.user
        if "owner" in body:  # S7: sending owner on POST returns 403 (reference §3, Update schema)
            return SandboxResponse(403, {"message": "Field owner cannot be changed by update."})
        record = json.loads(json.dumps(self._existing_activity(entity, activity_id)))  # all or nothing: a copy
        participants = body.get("participants")
        fields = {name: value for name, value in body.items() if name in UPDATE_FIELDS[entity] - {"participants"}}
        self._apply_fields(record, fields, call.zone)
        if participants:
            self._apply_participant_ops(record, participants)
        if record["status"] not in ("COMPLETED", "CANCELLED"):
            record["completed"] = None  # `completed` only takes effect with those statuses (reference §3)
        self._bump(record, user["username"])
        self.state["records"][entity][activity_id] = record
        self._emit("record.updated", entity, record, author=user["username"], source=self._api_source(user))
        return SandboxResponse(200, {"success": True})

    def _delete_activity(self, call: ApiCall, entity: str, activity_id: str) -> SandboxResponse:
        record = self._existing_activity(entity, activity_id)
        del self.state["records"][entity][activity_id]
        self._emit("record.deleted", entity, record, author=call.user["username"], source=self._api_source(call.user))
        return SandboxResponse(200)  # an empty body (reference §2)

    def _apply_fields(self, record: dict, fields: dict, zone: ZoneInfo) -> None:
        if fields.get("priority", "DEFAULT") not in PRIORITIES:
            raise BadRequest(f"Invalid priority {fields['priority']}")
        if "status" in fields and fields["status"] not in STATUSES:
            raise BadRequest(f"Invalid status {fields['status']}")
        for name, value in fields.items():
            if name in DATETIME_FIELDS:
                instant = parse_raynet_datetime(value, zone)
                value = to_minute(instant).isoformat() if instant else None
            elif name == "tags" and isinstance(value, str):  # the update schema says "aaa, bbb"
                value = [tag.strip() for tag in value.split(",") if tag.strip()]
            elif name == "customFields":
                value = {**record["customFields"], **(value or {})}
                value = {key: item for key, item in value.items() if item not in (None, "")}
            elif name == "personal":
                value = str(value).lower() in ("true", "on", "yes", "1")  # reference §2, Booleans
            record[name] = value

    def _apply_participant_ops(self, record: dict, operations: list[dict]) -> None:
        """No id = add, negative id = delete, positive id = modify (reference §3, participant rules)."""
        for operation in operations:
            participant_id = operation.get("id")
            if participant_id is None:
                fields = {k: operation.get(k) for k in ("owner", "role", "company", "lead")}
                record["participants"].append(self._participant(operation.get("person"), **fields))
                continue
            existing = next((p for p in record["participants"] if p["id"] == abs(participant_id)), None)
            if existing is None:
                raise BadRequest(f"Participant with id {abs(participant_id)} was not found")
            if participant_id < 0:
                record["participants"].remove(existing)
            else:
                existing.update(
                    {k: v for k, v in operation.items() if k in ("owner", "role", "person", "company", "lead")}
                )

    def _add_ext_id(self, call: ApiCall, entity: str, activity_id: str) -> SandboxResponse:
        record = self._existing_activity(entity, activity_id)
        ext_id = str(call.body().get("extId") or "")
        holder = self._find_by_ext_id(entity, ext_id)
        if not ext_id or (holder is not None and holder is not record):
            raise BadRequest(f"Invalid or already used extId {ext_id}")
        if ext_id not in record["extIds"]:
            if len(record["extIds"]) >= 10:  # reference §2: "A record can have up to 10"
                raise BadRequest("A record can have at most 10 extIds")
            record["extIds"].append(ext_id)
            self._records_by_ext_id(entity)[ext_id] = str(record["id"])
        return SandboxResponse(200, {"success": "true"})  # a string, as the example

    def _remove_ext_id(self, call: ApiCall, entity: str, activity_id: str, ext_id: str) -> SandboxResponse:
        record = self._existing_activity(entity, activity_id)
        record["extIds"] = [value for value in record["extIds"] if value != unquote(ext_id)]
        return SandboxResponse(200, {"success": "true"})

    def _find_by_ext_id(self, entity: str, ext_id: str) -> dict | None:
        record = self.state["records"][entity].get(self._records_by_ext_id(entity).get(ext_id, ""))
        return record if record is not None and ext_id in record["extIds"] else None

    def _records_by_ext_id(self, entity: str) -> dict[str, str]:
        """Record ids by extId, as last added: a look-up without reading every record (a first sync of
        10,000 events made that O(n²)). _find_by_ext_id checks the record still holds it (removed, deleted).
        Built from the records once for a state stored before it was kept."""
        index = self.state.setdefault("ext_ids", {})
        if entity not in index:
            records = self.state["records"][entity]
            index[entity] = {ext_id: key for key, record in records.items() for ext_id in record["extIds"]}
        return index[entity]

    # --- webhooks (reference §7) ------------------------------------------------------------------------
    def _api_source(self, user: dict) -> dict:
        """`source.description` is the name of the API key: a dedicated key lets the sync drop its own echoes."""
        return {"name": "api", "description": self.state["api_key_names"].get(user["username"], "API")}

    def _emit(self, event_type: str, entity: str, record: dict, *, author: str, source: dict) -> None:
        """Queue one event per subscribed webhook; payloads carry identifiers only (reference §7)."""
        created_at = self.now().astimezone(ZoneInfo("Europe/Prague")).isoformat(timespec="milliseconds")
        for webhook in self.state["webhooks"]:
            if event_type not in webhook["eventsFilter"]:
                continue
            payload = {
                "eventId": uuid.uuid4().hex,
                "createdAt": created_at,
                "type": event_type,
                "author": author,
                "source": dict(source),
                "data": {
                    "entityName": ENTITY_NAMES[entity],
                    "entityId": record["id"],
                    "extIds": record["extIds"] or None,
                },
            }
            self.state["webhook_outbox"].append(
                {"url": webhook["url"], "token": webhook["secretToken"], "payload": payload}
            )

    def pending_webhooks(self) -> list[dict]:
        """Payloads queued for delivery, oldest first."""
        return [item["payload"] for item in self.state["webhook_outbox"]]

    def deliver_webhooks(self) -> int:
        """POST every queued event with X-RAYNETCRM-Token; failures (any non-2xx) stay queued for a retry."""
        outgoing = self._take_outbox()
        failed = [item for item in outgoing if not post_outgoing(item)]
        self.requeue(failed)
        return len(outgoing) - len(failed)

    def take_outgoing(self) -> list[Outgoing]:
        """With `state["deliver_http"]` on, the HTTP front delivers the queued webhooks after each change, as
        Raynet does on its own; off (the default), they wait for `deliver_webhooks`."""
        return self._take_outbox() if self.state.get("deliver_http") else []

    def _take_outbox(self) -> list[Outgoing]:
        taken, self.state["webhook_outbox"] = self.state["webhook_outbox"], []
        return [
            Outgoing(item["url"], item["payload"], {"X-RAYNETCRM-Token": item["token"]} if item["token"] else {})
            for item in taken
        ]

    def requeue(self, failed: list[Outgoing]) -> None:
        queued = [
            {"url": item.url, "token": item.headers.get("X-RAYNETCRM-Token"), "payload": item.payload}
            for item in failed
        ]
        self.state["webhook_outbox"][:0] = queued

    def _list_webhooks(self, call: ApiCall) -> SandboxResponse:
        webhooks = [dict(webhook) for webhook in self.state["webhooks"]]
        return self._detail({"technicalContacts": self.state["technical_contacts"], "webhooks": webhooks})

    def _add_webhook(self, call: ApiCall) -> SandboxResponse:
        body = call.body()
        if not str(body.get("url") or "").startswith("https://"):
            raise BadRequest("Invalid webhook url")
        webhook = {
            "webhookId": uuid.uuid4().hex,
            "url": body["url"],
            "secretToken": body.get("secretToken"),
            "eventsFilter": list(body.get("events") or WEBHOOK_EVENTS),
        }
        self.state["webhooks"].append(webhook)
        return SandboxResponse(201, {"success": True, "data": {"uuid": webhook["webhookId"]}})

    def _set_technical_contacts(self, call: ApiCall) -> SandboxResponse:
        self.state["technical_contacts"] = list(call.body().get("technicalContacts") or [])
        return SandboxResponse(200, {"success": True})

    def _remove_webhook(self, call: ApiCall, webhook_id: str) -> SandboxResponse:
        webhook = next((w for w in self.state["webhooks"] if w["webhookId"] == webhook_id), None)
        if webhook is None:
            raise NotFound(f"webhook with id {webhook_id} was not found")
        self.state["webhooks"].remove(webhook)
        return SandboxResponse(200, {"success": True})
