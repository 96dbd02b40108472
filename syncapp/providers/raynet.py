"""Raynet CRM REST API v2 client: calendar activities (meeting, event), users and persons.

Every oddity this module works around is described in /work/shared/reference/raynet-api.md
("the reference" below; live docs: https://app.raynetcrm.com/api/doc/index-en.html).
All HTTP goes through ProviderSession: one requests.Session, timeouts, bounded retries, and at
most 4 requests in flight per Raynet instance across threads and processes (reference §6).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote, urlsplit
from zoneinfo import ZoneInfo

import requests
from django.utils import timezone

from syncapp.models import RaynetConnection
from syncapp.providers.base import (
    ConnectionCheck,
    ErrorKind,
    ProviderError,
    ProviderSession,
    UnreadableItem,
    basic_auth_value,
    json_body,
    parse_retry_after,
    unreadable,
)
from syncapp.secrets import UndecryptableSecret

logger = logging.getLogger("syncapp.providers.raynet")

SIDE = "raynet"  # ProviderError.side of every error this client raises
ENTITIES = ("meeting", "event")
PAGE_SIZE = 1000  # the largest page Raynet serves (reference §4)
MAX_CONNECTIONS = 4  # "429 if a single client exceeds 4 concurrently active connections" (reference §6)
# rowInfo.lastModifiedAt has minute precision (reference §4, Incremental sync): look back a little further.
MODIFIED_SINCE_OVERLAP = timedelta(minutes=2)
DATETIME_KEYS = ("scheduledFrom", "scheduledTill", "completed", "rowInfo.createdAt", "rowInfo.updatedAt")
# Fields the engine writes that the create (PUT) schema lacks (reference §3, "Not in the create schema"):
# they go in a follow-up POST update, whose schema has them, so they are never silently dropped.
UPDATE_ONLY_FIELDS = ("status", "personal", "meetingPlace", "participants", "customFields")


def is_new_record_value(name: str, value: Any, fields: dict) -> bool:
    """Whether a new record has this update-only value already, so the follow-up update can leave it out.

    No place, no participants; a scheduled activity's status is SCHEDULED (UNCONFIRMED, reference §3; the
    sandbox does so). Were it NEW, the next poll reads that as a Raynet edit of the record: one Outlook
    PATCH that changes nothing there, the status stays NEW, nothing is lost.
    """
    if name in ("meetingPlace", "participants"):
        return not value
    if name == "status":
        return value == "SCHEDULED" and fields.get("scheduledFrom") is not None
    return False


RATE_LIMIT_SAVE_EVERY = 20  # responses between saves of the X-Ratelimit-* numbers
RATE_LIMIT_SAVE_SECONDS = 30.0
UNREADABLE_KEY = "undecryptable_key"
UNREADABLE_KEY_MESSAGE = "The stored Raynet API key cannot be decrypted: enter the key again."


@dataclass(frozen=True)
class RaynetUser:
    user_account_id: int
    person_id: int  # activities' `owner` is this person id, not the user account id (reference §5)
    username: str  # the login e-mail
    email: str  # the person's primary e-mail, else the login
    full_name: str


# --- error classification ---------------------------------------------------------------------------------


def error_body(response: requests.Response) -> dict:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def admin_message(plain: str, body: dict) -> str:
    """Our plain words, then Raynet's: `translatedMessage`, else `message`, as Raynet's own clients show (§6).

    Not trimmed here: the session first removes any credential Raynet echoed, then trims (scrub_secrets),
    so a key cut in half at the limit can never slip through.
    """
    text = str(body.get("translatedMessage") or body.get("message") or "").strip()
    return f"{plain} Raynet says: “{text[:2000]}”" if text else plain


def header_int(response: requests.Response, name: str) -> int | None:
    try:
        return int(response.headers[name])
    except (KeyError, ValueError):
        return None


def seconds_until_reset(response: requests.Response) -> float | None:
    reset = header_int(response, "X-Ratelimit-Reset")
    return max(0.0, reset - time.time()) if reset is not None else None


def is_budget_spent(response: requests.Response, body: dict) -> bool:
    """The daily limit, not the 4-connection rule: Remaining is 0, or (without the header) the body says so.

    429 in the 2023+ spec, 503 in the 2021 docs, same body (reference §6).
    """
    remaining = header_int(response, "X-Ratelimit-Remaining")
    if remaining is not None:
        return remaining <= 0 and (response.status_code == 429 or body.get("type") == "RequestLimitReached")
    return body.get("type") == "RequestLimitReached"


def classify(response: requests.Response) -> ProviderError:
    """A Raynet error response as a ProviderError whose kind says whether retrying can help."""
    status = response.status_code
    body = error_body(response)
    code = str(body.get("type") or body.get("message") or "")[:100]

    def error(kind: ErrorKind, plain: str, retry_after: float | None = None) -> ProviderError:
        return ProviderError(
            admin_message(plain, body), kind=kind, status=status, code=code, retry_after=retry_after, side=SIDE
        )

    if status in (429, 503) and is_budget_spent(response, body):
        return error(
            ErrorKind.BUDGET_SPENT,
            "Raynet's daily API request limit is spent; syncing resumes when it resets (midnight UTC).",
            seconds_until_reset(response),
        )
    if status == 429:  # more than 4 connections at once (reference §6): short back-off, then retry
        return error(
            ErrorKind.RATE_LIMITED,
            "Raynet is throttling requests.",
            parse_retry_after(response.headers.get("Retry-After")),
        )
    if status in (401, 403):
        return error(
            ErrorKind.AUTH,
            "Raynet refused the login: check the API user e-mail, the API key and the instance name "
            "(after more than 20 failed logins Raynet blocks the address for 60 minutes).",
        )
    if status == 404:
        return error(ErrorKind.NOT_FOUND, "The Raynet record does not exist (any more).")
    if status == 500 and "AttributeAccessDeniedException" in str(body.get("message")):
        # Raynet answers permission errors with 500, not 403 (reference §6); retrying cannot help.
        return error(ErrorKind.PERMISSION, "The Raynet API user lacks a permission this needs.")
    if status == 500 and "TranslatedApplicationException" in str(body.get("message")):
        # A business rule (e.g. exception.stillReferenced, reference §6): the same request fails again.
        return error(ErrorKind.VALIDATION, "Raynet refused the change.")
    if status >= 500:
        return error(ErrorKind.TRANSIENT, f"Raynet had a server error (HTTP {status}).")
    return error(ErrorKind.VALIDATION, f"Raynet rejected the request (HTTP {status}).")


def last_id(rows: list) -> int:
    """The highest id of the rows read so far, where to go on; a malformed row does not stop the walk."""
    return max((row["id"] for row in rows if isinstance(row, dict) and isinstance(row.get("id"), int)), default=0)


# --- date-times ----------------------------------------------------------------------------------------


def parse_datetime(value: Any, zone: ZoneInfo) -> datetime | None:
    """Raynet sends `yyyy-MM-dd HH:mm` in the API user's zone, or ISO 8601 with `dateFormat=ISO8601` (§2)."""
    if not isinstance(value, str) or not value:
        return None
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=zone)
    return parsed.astimezone(UTC)


def format_datetime(value: datetime, zone: ZoneInfo) -> str:
    """ISO 8601 with an offset, as the reference recommends for writes and filters (§2)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=zone)
    return value.astimezone(zone).isoformat(timespec="milliseconds")


class RaynetClient:
    """One Raynet connection's API: Basic auth (login e-mail + API key) and X-Instance-Name on every call."""

    def __init__(self, connection: RaynetConnection, *, session: ProviderSession | None = None) -> None:
        self.connection = connection
        self.zone = ZoneInfo(connection.timezone)
        self.session = session or ProviderSession(
            base_url=connection.api_base_url,
            classify=classify,
            concurrency_key=self._concurrency_key,
            concurrency_limit=MAX_CONNECTIONS,
        )
        self.session.side = SIDE
        self.session.on_response = self._track_rate_limit
        # A key that cannot be decrypted fails each call in plain words (_request), not the construction.
        try:
            api_key = connection.api_key.reveal() if connection.api_key else ""
        except UndecryptableSecret:
            api_key = None
        self._key_unreadable = api_key is None
        credentials = (connection.api_user_email, api_key or "")
        self.session.secrets = lambda: (credentials[1], basic_auth_value(*credentials))
        self.session.http.auth = credentials
        self.session.http.headers["X-Instance-Name"] = connection.instance_name
        self.session.http.headers["Accept"] = "application/json"
        self._person_emails: dict[int, str] = {}
        self._person_by_email: dict[str, int | None] = {}
        self._rate_limit_lock = threading.Lock()
        # Responses received, each one request of the daily budget (what a first sync spends: service.py).
        self.responses = 0
        self._unsaved_responses = 0
        self._last_rate_limit_save = 0.0

    def _concurrency_key(self, url: str) -> tuple[str, str]:
        return "raynet", f"{urlsplit(url).hostname}/{self.connection.instance_name}"

    # --- activities ----------------------------------------------------------------------------------
    def list_activities(
        self,
        entity: str,
        *,
        owner_id: int | None = None,
        scheduled_from: datetime | None = None,
        scheduled_till: datetime | None = None,
        modified_since: datetime | None = None,
        status: str | None = None,
    ) -> list[dict | UnreadableItem]:
        """Activities overlapping [scheduled_from, scheduled_till] and/or modified since a watermark.

        The window selects overlap: `scheduledTill[GE]=start` and `scheduledFrom[LE]=end`; both columns
        take GT/GE/LT/LE (reference §4, Activity filters). An activity without `scheduledTill` fails the
        first test; Raynet's calendar items always have both ends.
        `modified_since` is moved back by MODIFIED_SINCE_OVERLAP because rowInfo.lastModifiedAt has
        minute precision: the same record may come back in the next poll, so callers dedupe.
        """
        filters: dict[str, Any] = {}
        if owner_id is not None:
            filters["owner-id"] = owner_id  # with a hyphen; the owner is a person id (reference §4, §5)
        if scheduled_from is not None:
            filters["scheduledTill[GE]"] = format_datetime(scheduled_from, self.zone)
        if scheduled_till is not None:
            filters["scheduledFrom[LE]"] = format_datetime(scheduled_till, self.zone)
        if modified_since is not None:
            filters["rowInfo.lastModifiedAt[GT]"] = format_datetime(modified_since - MODIFIED_SINCE_OVERLAP, self.zone)
        if status is not None:
            filters["status"] = status
        rows = self._list_all(self._entity_path(entity), filters, walk_by_id=True)
        return [self._listed_activity(entity, row, owner_id=owner_id) for row in rows]

    def list_activity_ids(
        self, entity: str, *, scheduled_from: datetime, scheduled_till: datetime, after_id: int = 0
    ) -> tuple[list[dict], int]:
        """One page (1000 rows) of the ids in the window, from `after_id` on, and how many rows are left.

        `view=rowInfo` returns "only status fields (created, modified, version…)" (reference §4): the
        smallest listing that tells which records still exist, the way §7 (b) suggests finding
        deletions. Its exact shape is UNCONFIRMED: only `id` and the `rowInfo.createdAt` / `updatedAt`
        stamps are relied on (row_changed_at), and a row without an int id is left out (the record is then
        looked up, never taken as deleted).
        """
        params = {
            "scheduledTill[GE]": format_datetime(scheduled_from, self.zone),
            "scheduledFrom[LE]": format_datetime(scheduled_till, self.zone),
            "view": "rowInfo",
            "limit": PAGE_SIZE,
            "sortColumn": "id",
            "sortDirection": "ASC",
        }
        if after_id:
            params["id[GT]"] = after_id
        body = self._envelope(self._request("GET", self._entity_path(entity), params=params, iso=True))
        rows = [row for row in body.get("data") or [] if isinstance(row, dict) and isinstance(row.get("id"), int)]
        try:
            total = int(body.get("totalCount") or 0)
        except (TypeError, ValueError):
            total = len(rows)
        return rows, total

    def row_changed_at(self, row: dict) -> datetime | None:
        """When a listed record was last created or updated (rowInfo.lastModifiedAt, which is only a filter,
        is "created or updated"), or None when the row cannot tell. Whether `view=rowInfo` rows carry these
        stamps is UNCONFIRMED (reference §4): a row without the `rowInfo.updatedAt` key, or with a stamp that
        cannot be read, tells nothing, and the poll then makes the change listing as before. An empty
        updatedAt (perhaps a record never updated) leaves createdAt."""
        if "rowInfo.updatedAt" not in row:
            return None
        try:
            stamps = [parse_datetime(row.get(key), self.zone) for key in ("rowInfo.createdAt", "rowInfo.updatedAt")]
        except ValueError:
            return None
        return max((stamp for stamp in stamps if stamp is not None), default=None)

    def _listed_activity(self, entity: str, row: Any, *, owner_id: int | None) -> dict | UnreadableItem:
        """A list row as an activity, or as an UnreadableItem when it cannot be parsed: never the whole list."""
        try:
            if not isinstance(row, dict) or not isinstance(row.get("id"), int):
                raise ValueError("the row has no numeric id")
            return self._activity(entity, row, owner_id=owner_id)
        except (ValueError, TypeError, KeyError, AttributeError) as error:
            return unreadable(SIDE, row, error)

    def get_activity(self, entity: str, activity_id: int) -> dict | None:
        """The record, or None when Raynet answers 404 (deleted; there are no tombstones, reference §7)."""
        try:
            data = self._data(self._request("GET", f"{self._entity_path(entity)}{int(activity_id)}/", iso=True))
        except ProviderError as error:
            if error.kind == ErrorKind.NOT_FOUND:
                return None
            raise
        return self._activity(entity, data)

    def create_activity(self, entity: str, fields: dict, *, ext_id: str | None = None) -> int:
        """Create with PUT (201 + data.id, reference §2), then tag the ext id and set the update-only fields
        a new record does not have already (is_new_record_value): two writes for a plain event, three with a
        place or participants.

        The ext id goes on first so that a create retried after a crash finds the record
        (find_by_ext_id); Raynet takes no ext id in the create body itself (reference §2, External IDs).
        """
        create_fields = {key: value for key, value in fields.items() if key not in UPDATE_ONLY_FIELDS}
        update_fields = {
            key: value
            for key, value in fields.items()
            if key in UPDATE_ONLY_FIELDS and not is_new_record_value(key, value, fields)
        }
        # Never resent once it may have reached Raynet: a lost reply would make a second record.
        response = self._request("PUT", self._entity_path(entity), body=create_fields, idempotent=False)
        if response.status_code != 201:  # Raynet's own PHP client treats anything else as an error (§2)
            # Not retried: the record may exist anyway, and the ext id lookup is what finds it.
            raise ProviderError(
                f"Raynet answered HTTP {response.status_code} to a create.",
                kind=ErrorKind.VALIDATION,
                status=response.status_code,
                side=SIDE,
                maybe_applied=True,
            )
        data = self._data(response)
        try:
            activity_id = int(data["id"])
        except (TypeError, KeyError, ValueError):
            raise ProviderError(
                "Raynet confirmed a create without the new record's id.",
                kind=ErrorKind.TRANSIENT,
                status=response.status_code,
                side=SIDE,
                maybe_applied=True,
            ) from None
        if ext_id:
            self.tag_ext_id(entity, activity_id, ext_id)
        if update_fields:
            self.update_activity(entity, activity_id, update_fields)
        return activity_id

    def tag_ext_id(self, entity: str, activity_id: int, ext_id: str) -> None:
        """Add an external id (reference §2, External IDs); adding one the record already has changes nothing."""
        self._request("PUT", f"{self._entity_path(entity)}{int(activity_id)}/extId/", body={"extId": ext_id})

    def update_activity(self, entity: str, activity_id: int, fields: dict) -> None:
        """Partial update with POST; Raynet sends no record back (reference §2).

        Participants are operations: no id = add, negative id = delete, positive id = modify (§3).
        """
        if "owner" in fields:
            # There is no owner on update; Raynet answers 403 (reference §3, Update schema).
            raise ProviderError("Raynet cannot change an activity's owner.", kind=ErrorKind.VALIDATION, side=SIDE)
        # Adding a participant twice makes two participants: such an update is never resent blindly.
        adds = any(isinstance(p, dict) and "id" not in p for p in fields.get("participants") or [])
        self._request("POST", f"{self._entity_path(entity)}{int(activity_id)}/", body=fields, idempotent=not adds)

    def delete_activity(self, entity: str, activity_id: int) -> None:
        """DELETE; a record that is already gone (404) counts as deleted."""
        try:
            self._request("DELETE", f"{self._entity_path(entity)}{int(activity_id)}/")
        except ProviderError as error:
            if error.kind != ErrorKind.NOT_FOUND:
                raise

    def find_by_ext_id(self, entity: str, ext_id: str) -> dict | None:
        """GET /{entity}/ext/{extId}/ (reference §2, External IDs); None when no record carries it."""
        path = f"{self._entity_path(entity)}ext/{quote(ext_id, safe=':')}/"
        try:
            data = self._data(self._request("GET", path, iso=True))
        except ProviderError as error:
            if error.kind == ErrorKind.NOT_FOUND:
                return None
            raise
        return self._activity(entity, data)

    # --- users and persons -------------------------------------------------------------------------------
    def list_users(self) -> list[RaynetUser]:
        """User accounts with their person (the activity owner) and e-mail.

        The e-mail is the person's primary `contactInfo.email`, read in one list of the persons that
        have a user account (`userAccount-id[NE]=`, as Raynet's n8n node does, reference §5); the login
        name is the fallback.
        """
        users = self._list_all("userAccount/", {})
        persons = self._list_all("person/", {"userAccount-id[NE]": ""})
        emails = {p["id"]: (p.get("contactInfo") or {}).get("email") for p in persons}
        self._person_emails.update({pid: email for pid, email in emails.items() if email})
        return [
            RaynetUser(
                user_account_id=user["id"],
                person_id=user["person"]["id"],
                username=user["username"],
                email=emails.get(user["person"]["id"]) or user["username"],
                full_name=user["person"].get("fullName") or "",
            )
            for user in users
            if user.get("person")
        ]

    def find_person_by_email(self, email: str) -> int | None:
        """The person whose primary e-mail is `email` (case-insensitive), preferring users; cached.

        LIKE_NOCASE makes the match case-insensitive; the exact comparison after it drops rows that
        matched only because a character acted as a wildcard.
        """
        key = email.strip().casefold()
        if key not in self._person_by_email:
            rows = self._list_all("person/", {"contactInfo.email[LIKE_NOCASE]": email.strip()})
            rows = [r for r in rows if str((r.get("contactInfo") or {}).get("email") or "").casefold() == key]
            rows.sort(key=lambda r: (not r.get("activeUserAccount"), r["id"]))
            self._person_by_email[key] = rows[0]["id"] if rows else None
            if rows:
                self._person_emails[rows[0]["id"]] = rows[0]["contactInfo"]["email"]
        return self._person_by_email[key]

    def get_person_emails(self, person_ids: Iterable[int]) -> dict[int, str]:
        """Primary e-mails of persons, one GET per person not yet cached (/person/ has no id filter, §5)."""
        result: dict[int, str] = {}
        for person_id in dict.fromkeys(int(pid) for pid in person_ids):
            if person_id not in self._person_emails:
                email = self._fetch_person_email(person_id)
                if email:
                    self._person_emails[person_id] = email
            if person_id in self._person_emails:
                result[person_id] = self._person_emails[person_id]
        return result

    def _fetch_person_email(self, person_id: int) -> str | None:
        try:
            person = self._data(self._request("GET", f"person/{person_id}/"))
        except ProviderError as error:
            if error.kind == ErrorKind.NOT_FOUND:
                return None
            raise
        return (person.get("contactInfo") or {}).get("email") or None

    # --- connection test -----------------------------------------------------------------------------------
    def test_connection(self) -> ConnectionCheck:
        """Plain words for the connect form: do the instance, user and key work, and may the user read meetings."""
        instance = self.connection.instance_name
        try:
            users = self._request("GET", "userAccount/", params={"username": self.connection.api_user_email})
            self._request("GET", "meeting/", params={"limit": 1})
        except ProviderError as error:
            return ConnectionCheck(False, self._connection_problem(error), permanent=error.permanent, error=error)
        found = self._data(users)
        who = found[0]["person"].get("fullName") if found and found[0].get("person") else None
        as_whom = f"{self.connection.api_user_email} ({who})" if who else self.connection.api_user_email
        return ConnectionCheck(True, f"Connected to Raynet instance “{instance}” as {as_whom}.")

    def _connection_problem(self, error: ProviderError) -> str:
        instance = self.connection.instance_name
        if error.code == UNREADABLE_KEY:
            return error.message
        if error.kind == ErrorKind.AUTH:
            return (
                f"Raynet did not accept the login for instance “{instance}”: check the instance name, "
                f"the API user e-mail ({self.connection.api_user_email}) and the API key. "
                "More than 20 failed logins block the address for 60 minutes."
            )
        if error.kind == ErrorKind.PERMISSION:
            return f"The login works, but the API user may not read users or meetings. {error.message}"
        if error.kind == ErrorKind.BUDGET_SPENT:
            return f"The login could not be checked: {error.message} It resets at midnight UTC."
        if error.kind == ErrorKind.NOT_FOUND:
            return f"No Raynet API answers at {self.connection.api_base_url}: check the region."
        return f"Raynet could not be reached or answered with an error: {error.message}"

    # --- plumbing -------------------------------------------------------------------------------------------
    # --- webhooks (reference §7)
    def add_webhook(self, *, url: str, secret_token: str, events: list[str]) -> str:
        """Register a webhook (PUT /webhook/ → 201 with data.uuid); returns its id."""
        data = self._data(
            self._request("PUT", "webhook/", body={"url": url, "secretToken": secret_token, "events": events})
        )
        return str((data or {}).get("uuid") or "")

    def remove_webhook(self, webhook_id: str) -> None:
        """DELETE /webhook/{uuid}/; one that is already gone counts as removed."""
        try:
            self._request("DELETE", f"webhook/{quote(webhook_id, safe='')}/")
        except ProviderError as error:
            if error.kind != ErrorKind.NOT_FOUND:
                raise

    @staticmethod
    def _entity_path(entity: str) -> str:
        if entity not in ENTITIES:
            raise ValueError(f"Unknown Raynet activity type {entity!r}")
        return f"{entity}/"

    def _request(
        self,
        method: str,
        path: str,
        *,
        params: dict | None = None,
        body: dict | None = None,
        iso: bool = False,
        idempotent: bool = True,
    ) -> requests.Response:
        """One call; while the daily budget is spent, fail at once without calling (reference §6)."""
        if self._key_unreadable:
            raise ProviderError(UNREADABLE_KEY_MESSAGE, kind=ErrorKind.AUTH, code=UNREADABLE_KEY, side=SIDE)
        if self.connection.is_paused():
            raise ProviderError(
                f"Raynet's daily API request limit is spent; paused until {self.connection.paused_until:%H:%M} UTC.",
                kind=ErrorKind.BUDGET_SPENT,
                retry_after=(self.connection.paused_until - timezone.now()).total_seconds(),
                side=SIDE,
            )
        if iso:
            params = {**(params or {}), "dateFormat": "ISO8601"}  # always ask for offsets (reference §2)
        kwargs: dict[str, Any] = {"params": params}
        if body is not None:
            kwargs["data"] = json.dumps(self._serialize(body))
            kwargs["headers"] = {"Content-Type": "application/json"}
        try:
            return self.session.request(method, path, idempotent=idempotent, **kwargs)
        except ProviderError as error:
            if error.kind == ErrorKind.BUDGET_SPENT:
                self._pause(error)
            raise

    def _pause(self, error: ProviderError) -> None:
        """Pause the connection until the budget resets (X-Ratelimit-Reset, else next midnight UTC)."""
        now = timezone.now()
        reset_at = self.connection.rate_limit_reset_at  # this very response's X-Ratelimit-Reset
        if reset_at is not None and reset_at > now:
            until = reset_at
        elif error.retry_after:
            until = now + timedelta(seconds=error.retry_after)
        else:  # the old 503 may come without headers; the budget counts midnight to midnight UTC
            until = datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), UTC)
        self.connection.paused_until = until
        self.connection.rate_limit_remaining = 0
        self.connection.save(update_fields=["paused_until", "rate_limit_remaining", "rate_limit_reset_at"])
        logger.warning("Raynet %s: daily request budget spent, paused until %s", self.connection.instance_name, until)

    def _serialize(self, fields: dict) -> dict:
        return {k: format_datetime(v, self.zone) if isinstance(v, datetime) else v for k, v in fields.items()}

    @staticmethod
    def _envelope(response: requests.Response) -> dict:
        """A success envelope; `success` is `true` or `"true"` depending on the endpoint (reference §2)."""
        body = json_body(response, service="Raynet", side=SIDE)
        if not isinstance(body, dict) or str(body.get("success")).lower() != "true":
            raise ProviderError(
                f"Raynet answered HTTP {response.status_code} without its success envelope.",
                kind=ErrorKind.TRANSIENT,
                status=response.status_code,
                side=SIDE,
                maybe_applied=True,
            )
        return body

    def _data(self, response: requests.Response) -> Any:
        return self._envelope(response).get("data")

    def _list_all(self, path: str, filters: dict, *, walk_by_id: bool = False) -> list[dict]:
        """Every row, in pages of 1000 until `totalCount` is reached (reference §4, Pagination).

        Activities are walked by id (`id[GT]` of the last row, sorted by id) rather than by offset, so a
        record created or deleted between two pages can neither be skipped nor read twice; `totalCount`
        then counts the rows left. Users and persons have no documented `id` filter: plain offsets.
        """
        rows: list[dict] = []
        while True:
            params = {**filters, "limit": PAGE_SIZE}
            if walk_by_id:
                params.update(sortColumn="id", sortDirection="ASC")
                if rows:
                    params["id[GT]"] = last_id(rows)
            else:
                params["offset"] = len(rows)
            body = self._envelope(self._request("GET", path, params=params, iso=True))
            page = body.get("data") or []
            try:
                total = int(body.get("totalCount") or 0)
            except (TypeError, ValueError):
                total = None
            if not isinstance(page, list) or total is None:
                raise ProviderError(
                    f"Raynet answered a listing of {path} without its rows or their total count.",
                    kind=ErrorKind.TRANSIENT,
                    side=SIDE,
                )
            rows.extend(page)
            if not page or (len(page) >= total if walk_by_id else len(rows) >= total):
                return rows

    def _activity(self, entity: str, record: dict, *, owner_id: int | None = None) -> dict:
        """The raw record with UTC datetimes and `_entity`.

        List rows carry no `owner` (only the detail does, reference §3); it is filled in from the
        participant flagged `owner`, else from the owner filter, so every record says whose it is.
        """
        activity = dict(record)
        for key in DATETIME_KEYS:
            if key in activity:
                activity[key] = parse_datetime(activity[key], self.zone)
        if not activity.get("owner"):
            owner = next((p for p in activity.get("participants") or [] if p.get("owner") and p.get("person")), None)
            if owner:
                activity["owner"] = {"id": owner["person"], "fullName": owner.get("name")}
            elif owner_id is not None:
                activity["owner"] = {"id": owner_id, "fullName": None}
        activity["_entity"] = entity
        return activity

    def _track_rate_limit(self, response: requests.Response) -> None:
        """Keep X-Ratelimit-* on the connection; saved every few responses, and at once on a new day or at 0."""
        with self._rate_limit_lock:
            self.responses += 1
        limit = header_int(response, "X-Ratelimit-Limit")
        remaining = header_int(response, "X-Ratelimit-Remaining")
        reset = header_int(response, "X-Ratelimit-Reset")
        if limit is None or remaining is None:
            return
        reset_at = datetime.fromtimestamp(reset, UTC) if reset is not None else None
        connection = self.connection
        with self._rate_limit_lock:
            urgent = reset_at != connection.rate_limit_reset_at or remaining == 0
            connection.rate_limit_limit = limit
            connection.rate_limit_remaining = remaining
            connection.rate_limit_reset_at = reset_at
            if connection.pk is None:  # a connection being tested in the connect form: saved with its numbers
                return
            self._unsaved_responses += 1
            due = time.monotonic() - self._last_rate_limit_save >= RATE_LIMIT_SAVE_SECONDS
            if not (urgent or due or self._unsaved_responses >= RATE_LIMIT_SAVE_EVERY):
                return
            self._unsaved_responses = 0
            self._last_rate_limit_save = time.monotonic()
        connection.save_rate_limit()
