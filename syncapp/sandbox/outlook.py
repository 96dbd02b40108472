"""A stateful fake of Microsoft Graph (Outlook calendars) and of the Microsoft identity platform.

One sandbox serves both hosts, told apart by the path below the sandbox's base URL:
- `v1.0/...` is Graph (`users`, `users/{id}/events`, `calendarView/delta`, `subscriptions`, ...);
- anything else is the login host: `{tenant}/v2.0/.well-known/openid-configuration` and
  `{tenant}/oauth2/v2.0/token` (client credentials).
Tests register it twice with `responses` (`https://login.sandbox.test` and `https://graph.sandbox.test`);
the HTTP front mounts it once, with MICROSOFT_AUTHORITY_HOST = `{mount}` and GRAPH_BASE_URL = `{mount}/v1.0`
(MSAL insists on https authorities, so the demo needs TLS in front).

Whole state is one JSON-able dict (times are ISO strings). Event times are stored as naive UTC
`YYYY-MM-DDTHH:MM:SS` strings, with the zone they were written in kept for recurrence expansion.
Reference: /work/shared/reference/graph-api.md (§ numbers below point into it).
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import re
import threading
import uuid
from collections.abc import Callable, Iterable
from datetime import UTC, date, datetime, time, timedelta
from html.parser import HTMLParser
from typing import Any
from urllib.parse import parse_qs, parse_qsl, unquote, urlencode, urlsplit, urlunsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import requests
from dateutil import rrule
from django.utils import timezone

from syncapp.sandbox.base import Outgoing, Sandbox, SandboxRequest, SandboxResponse, delivery_session, post_outgoing

ID_PREFIX = "AAkALgAAAAAAHYQDEapmEc2byACqAC-EWg0A"  # what an immutable event id looks like (§2)
OCCURRENCE_PREFIX = "AAkALgAAAAAAHYQDEapmEc2byACqAC-EWgOc"
REST_PREFIX, IMMUTABLE_PREFIX = "AAMkAG", "AAkALg"  # non-immutable ids differ only by this prefix here
ICAL_PREFIX = "040000008200E00074C5B7101A82E008"
NO_TIME = "0001-01-01T00:00:00Z"
MAX_SUBSCRIPTION_MINUTES = 10080  # Outlook events (§4)
MAILBOX_CONCURRENCY = 4  # concurrent requests per app and mailbox (§5)
MAILBOX_IN_PATH = re.compile(r"^v1\.0/users/([^/?]+)/")
DELTA_PAGE_SIZE = 10  # Graph's default delta page size is UNCONFIRMED (§ "Could not confirm" 7)
TOKENS_KEPT_PER_MAILBOX = 50  # older delta/skip tokens are evicted, as Outlook's token cache does (§3)

WRITABLE_FIELDS = {
    "subject", "body", "start", "end", "isAllDay", "sensitivity", "showAs", "importance", "attendees",
    "location", "locations", "recurrence", "categories", "isReminderOn", "reminderMinutesBeforeStart",
    "responseRequested", "allowNewTimeProposals", "isOnlineMeeting", "hideAttendees",
}  # fmt: skip
CREATE_ONLY_FIELDS = {"transactionId", "singleValueExtendedProperties", "@odata.type"}
ENUMS = {
    "sensitivity": {"normal", "personal", "private", "confidential"},
    "showAs": {"free", "tentative", "busy", "oof", "workingElsewhere", "unknown"},
    "importance": {"low", "normal", "high"},
}
# Changes that make Exchange send a meeting update to the attendees.
MEETING_UPDATE_FIELDS = {"start", "end", "isAllDay", "location", "locations", "recurrence"}
# Fields an occurrence may override; anything else is the series'.
OCCURRENCE_FIELDS = WRITABLE_FIELDS - {"recurrence"}
SHARED_WITH_ATTENDEES = {
    "subject", "body", "start", "end", "timeZone", "isAllDay", "location", "locations", "attendees",
    "organizer", "recurrence", "type", "importance", "sensitivity", "exceptions", "deletedOccurrences",
}  # fmt: skip

DAYS = {
    "monday": rrule.MO, "tuesday": rrule.TU, "wednesday": rrule.WE, "thursday": rrule.TH,
    "friday": rrule.FR, "saturday": rrule.SA, "sunday": rrule.SU,
}  # fmt: skip
WEEK_INDEX = {"first": 1, "second": 2, "third": 3, "fourth": 4, "last": -1}

EXTENDED_FILTER = re.compile(
    r"^singleValueExtendedProperties/Any\(\s*(\w+)\s*:\s*"
    r"\1/id eq '((?:[^']|'')*)' and \1/value eq '((?:[^']|'')*)'\s*\)$"
)
EXTENDED_EXPAND = re.compile(r"^singleValueExtendedProperties\(\$filter=id eq '((?:[^']|'')*)'\)$")
PREFER_ITEM = re.compile(r'\s*([\w.\-]+)\s*=\s*("[^"]*"|[^,\s]*)\s*(?:,|$)')


class GraphError(Exception):
    """An error reply; the person API lets it propagate, the HTTP fronts turn it into JSON."""

    def __init__(self, status: int, code: str, message: str, headers: dict | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


# --- small helpers --------------------------------------------------------------------------------


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode()


def utc_text(moment: datetime) -> str:
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="seconds")


def utc_from_text(text: str) -> datetime:
    return datetime.fromisoformat(text[:19]).replace(tzinfo=UTC)


def parse_stamp(text: str) -> datetime:
    return datetime.fromisoformat(text.rstrip("Z")[:26]).replace(tzinfo=UTC)


def detached(value: Any) -> Any:
    """A deep copy, so two stored events never share a nested dict."""
    return json.loads(json.dumps(value))


def stamp(moment: datetime) -> str:
    """Graph's createdDateTime/lastModifiedDateTime form: 7 fraction digits and Z."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f") + "0Z"


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo("UTC" if name in ("", "UTC", "Etc/UTC") else name)
    except (ZoneInfoNotFoundError, ValueError):
        raise GraphError(
            400, "TimeZoneNotSupportedException", f"A valid TimeZone value must be specified: {name}"
        ) from None


def parse_graph_time(value: Any) -> tuple[str, str]:
    """A dateTimeTimeZone → (naive UTC text, zone name)."""
    if not isinstance(value, dict) or "dateTime" not in value:
        raise GraphError(400, "RequestBodyRead", "start and end need dateTime and timeZone.")
    name = value.get("timeZone") or "UTC"
    try:
        local = datetime.fromisoformat(value["dateTime"].rstrip("Z")[:26])
    except ValueError:
        raise GraphError(400, "RequestBodyRead", f"Cannot convert {value['dateTime']!r} to a date-time.") from None
    moment = local.replace(tzinfo=zone(name)) if local.tzinfo is None else local
    return utc_text(moment), name


def parse_query_time(value: str | None, name: str) -> datetime:
    if not value:
        raise GraphError(400, "ErrorInvalidParameter", f"This request requires a time window specified by {name}.")
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise GraphError(400, "ErrorInvalidParameter", f"{name} is not a valid date-time.") from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def parse_prefer(header: str) -> dict[str, str]:
    """`Prefer` values, several comma-separated in one header (RFC 7240); keys lower-cased."""
    return {key.lower(): value.strip('"') for key, value in PREFER_ITEM.findall(header or "")}


def odata_unquote(value: str) -> str:
    return value.replace("''", "'")


def property_key(property_id: str) -> str:
    """Extended property ids: type and GUID match case-insensitively, the Name case-sensitively (§6)."""
    parts = property_id.split(" ", 3)
    if len(parts) == 4:
        return " ".join([parts[0].lower(), parts[1].lower(), parts[2].lower(), parts[3]])
    return property_id.lower()


class TextFromHtml(HTMLParser):
    BREAKS = {"br", "p", "div", "li", "tr", "h1", "h2", "h3"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skip = 0

    def handle_starttag(self, tag, attrs):
        self.skip += tag in ("head", "style", "script")
        if tag == "br":
            self.parts.append("\n")

    def handle_endtag(self, tag):
        self.skip -= tag in ("head", "style", "script")
        if tag in self.BREAKS - {"br"}:
            self.parts.append("\n")

    def handle_data(self, data):
        if not self.skip:
            self.parts.append(data)


def html_to_text(markup: str) -> str:
    parser = TextFromHtml()
    parser.feed(markup)
    return re.sub(r"\n{3,}", "\n\n", "".join(parts for parts in parser.parts)).strip()


def text_to_html(text: str) -> str:
    escaped = html.escape(text).replace("\n", "<br>\r\n")
    head = '<head>\r\n<meta http-equiv="Content-Type" content="text/html; charset=utf-8">\r\n</head>'
    return f"<html>\r\n{head}\r\n<body>\r\n{escaped}\r\n</body>\r\n</html>\r\n"


def build_rule(recurrence: dict, first_local: datetime) -> rrule.rrule:
    """A dateutil rule for a patternedRecurrence (§1), in the series' local wall time."""
    pattern, span = recurrence.get("pattern") or {}, recurrence.get("range") or {}
    days = [DAYS[day.lower()] for day in pattern.get("daysOfWeek") or []]
    index = WEEK_INDEX.get((pattern.get("index") or "first").lower(), 1)
    kind = pattern.get("type")
    options: dict[str, Any] = {"interval": int(pattern.get("interval") or 1)}
    if kind == "daily":
        freq = rrule.DAILY
    elif kind == "weekly":
        freq = rrule.WEEKLY
        options.update(byweekday=days, wkst=DAYS[(pattern.get("firstDayOfWeek") or "sunday").lower()])
    elif kind == "absoluteMonthly":
        freq, options["bymonthday"] = rrule.MONTHLY, int(pattern["dayOfMonth"])
    elif kind == "relativeMonthly":
        freq = rrule.MONTHLY
        options.update(byweekday=days, bysetpos=index)
    elif kind == "absoluteYearly":
        freq = rrule.YEARLY
        options.update(bymonth=int(pattern["month"]), bymonthday=int(pattern["dayOfMonth"]))
    elif kind == "relativeYearly":
        freq = rrule.YEARLY
        options.update(bymonth=int(pattern["month"]), byweekday=days, bysetpos=index)
    else:
        raise GraphError(400, "ErrorInvalidRequest", f"Unknown recurrence pattern type {kind!r}.")
    if kind in ("weekly", "relativeMonthly", "relativeYearly") and not days:
        raise GraphError(400, "ErrorInvalidRequest", "daysOfWeek is required for this pattern.")
    start_day = date.fromisoformat(span.get("startDate") or first_local.date().isoformat())
    dtstart = datetime.combine(start_day, first_local.time())
    if span.get("type") == "endDate":
        options["until"] = datetime.combine(date.fromisoformat(span["endDate"]), time.max)
    elif span.get("type") == "numbered":
        options["count"] = int(span["numberOfOccurrences"])
    elif span.get("type") != "noEnd":
        raise GraphError(400, "ErrorInvalidRequest", f"Unknown recurrence range type {span.get('type')!r}.")
    return rrule.rrule(freq, dtstart=dtstart, **options)


def looks_like_tenant(tenant: str) -> bool:
    """A GUID or a domain name: Entra answers anything else with AADSTS900023, not "not found"."""
    try:
        uuid.UUID(tenant)
    except ValueError:
        return bool(re.fullmatch(r"[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+", tenant))
    return True


def page_link(url: str, skip_token: str) -> str:
    """`url` with `$skiptoken` replaced: the other query options carry over as Graph's links do."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "$skiptoken"]
    query.append(("$skiptoken", skip_token))
    return urlunsplit(parts._replace(query=urlencode(query)))


class GraphSandbox(Sandbox):
    """Microsoft Graph for one or more tenants. See the module docstring for the URL scheme.

    Notifications of subscriptions are delivered by calling `on_notification(payload)`, synchronously,
    with the JSON body Graph would POST to notificationUrl (validation handshakes are skipped: every
    subscription request passes). Every payload is also appended to `state["notifications"]`.

    With `state["deliver_http"]` on, the sandbox behaves as Graph does instead: a new subscription is
    validated first (a POST to each URL with ?validationToken=, the reply must be the token as text/plain,
    else 400), and notifications are POSTed to notificationUrl (lifecycle ones to lifecycleNotificationUrl).
    """

    name = "graph"

    def __init__(self, state: dict | None = None) -> None:
        super().__init__(state)
        self.on_notification: Callable[[dict], None] | None = None
        self.outgoing: list[Outgoing] = []  # notifications held for the HTTP front (see Sandbox.take_outgoing)
        # Requests in flight per mailbox, in this process only (the HTTP front does not enforce the limit).
        self.in_flight: dict[str, int] = {}
        self.peak_in_flight: dict[str, int] = {}
        self._in_flight_lock = threading.Lock()

    def initial_state(self) -> dict:
        return {
            "now": None,
            "seq": 0,
            "tenants": {},
            "users": {},
            "events": {},
            "access_tokens": {},
            "sync_tokens": {},
            "subscriptions": {},
            "tombstones": [],  # [event id, owner, seq] of deleted single events, newest last
            "sent_mail": [],
            "notifications": [],
            "delta_replays": True,  # Graph may repeat a change on a later page (§3)
            "max_page_size": None,  # set to cap every collection page, to exercise paging
        }

    # === clock and ids =============================================================================
    def now(self) -> datetime:
        return datetime.fromisoformat(self.state["now"]) if self.state["now"] else timezone.now()

    def set_now(self, moment: datetime) -> None:
        self.state["now"] = moment.astimezone(UTC).isoformat()

    def _next(self) -> int:
        self.state["seq"] += 1
        return self.state["seq"]

    def _new_id(self) -> str:
        return ID_PREFIX + b64(self._next().to_bytes(4, "big") + uuid.uuid4().bytes[:18])

    def _change_key(self) -> str:
        return base64.b64encode(self._next().to_bytes(4, "big") + uuid.uuid4().bytes[:12]).decode()

    @staticmethod
    def _occurrence_id(master_id: str, original_start: str) -> str:
        return OCCURRENCE_PREFIX + b64(f"{master_id}|{original_start}".encode())

    @staticmethod
    def _split_occurrence_id(event_id: str) -> tuple[str, str] | None:
        if not event_id.startswith(OCCURRENCE_PREFIX):
            return None
        try:
            master_id, original_start = base64.urlsafe_b64decode(event_id[len(OCCURRENCE_PREFIX) :]).decode().split("|")
        except (ValueError, UnicodeDecodeError):
            return None
        return master_id, original_start

    @staticmethod
    def _internal_id(event_id: str) -> str:
        return IMMUTABLE_PREFIX + event_id[len(REST_PREFIX) :] if event_id.startswith(REST_PREFIX) else event_id

    @staticmethod
    def _public_id(event_id: str | None, immutable: bool) -> str | None:
        if event_id is None or immutable:
            return event_id
        return REST_PREFIX + event_id[len(IMMUTABLE_PREFIX) :]

    # === tenants and users (the person API) ========================================================
    def add_tenant(self, tenant_id: str, client_id: str, client_secret: str, *, consent: bool = True) -> None:
        """A tenant where our app is registered; `consent=False` until an admin accepts the consent page."""
        self.state["tenants"][tenant_id] = {"client_id": client_id, "client_secret": client_secret, "consent": consent}

    def revoke_consent(self, tenant_id: str) -> None:
        """The tenant's admin removed the app: new tokens are refused (tokens already issued keep working)."""
        self.state["tenants"][tenant_id]["consent"] = False

    def add_user(self, tenant_id: str, upn: str, display_name: str) -> str:
        user_id = str(uuid.UUID(int=self._next() + 0xA000_0000_0000_0000_0000_0000_0000_0000))
        self.state["users"][user_id] = {
            "tenant": tenant_id,
            "userPrincipalName": upn,
            "mail": upn,
            "displayName": display_name,
            "in_policy": True,
        }
        return user_id

    def set_mailbox_access(self, user_id: str, allowed: bool) -> None:
        """Put the mailbox inside or outside the app's application access policy (§7)."""
        self.state["users"][user_id]["in_policy"] = allowed

    def _user_by_address(self, tenant_id: str, address: str) -> str | None:
        for user_id, user in self.state["users"].items():
            if user["tenant"] == tenant_id and address.lower() in (
                user["mail"].lower(),
                user["userPrincipalName"].lower(),
            ):
                return user_id
        return None

    def _address(self, user_id: str) -> dict:
        user = self.state["users"][user_id]
        return {"emailAddress": {"name": user["displayName"], "address": user["mail"]}}

    # === faults ====================================================================================
    def throttle(self, *, times: int = 1, retry_after: str = "2.128", status: int = 429, path: str | None = None):
        """The next `times` Graph requests get a throttling reply shaped as Graph's (§5)."""
        code = "TooManyRequests" if status == 429 else "ServiceUnavailable"
        body = {"error": {"code": code, "message": "Please retry again later.", "innerError": {"status": str(status)}}}
        self.inject_fault(status, times=times, body=body, headers={"Retry-After": retry_after}, path=path or r"^v1\.0/")

    def revoke_tokens(self, *, after_requests: int = 0) -> None:
        """Every access token issued so far stops working (expired early or revoked by the tenant), at once or
        after `after_requests` more Graph requests (mid-run); new tokens are issued as before."""
        if after_requests:
            self.state["revoke_tokens_after"] = after_requests
        else:
            self.state["access_tokens"].clear()

    def expire_delta_tokens(self, user_id: str | None = None) -> None:
        """Evict the delta and skip tokens (of one mailbox): their next use gets 410 syncStateNotFound (§3)."""
        for token, record in list(self.state["sync_tokens"].items()):
            if user_id is None or record["user"] == user_id:
                del self.state["sync_tokens"][token]

    # === entry point ===============================================================================
    def handle(self, request: SandboxRequest) -> SandboxResponse:
        """As the base, but a fifth concurrent request to one mailbox gets 429 MailboxConcurrency (§5)."""
        match = MAILBOX_IN_PATH.match(request.path)
        if match is None:
            return super().handle(request)
        mailbox = unquote(match.group(1)).lower()
        with self._in_flight_lock:
            self.in_flight[mailbox] = self.in_flight.get(mailbox, 0) + 1
            self.peak_in_flight[mailbox] = max(self.peak_in_flight.get(mailbox, 0), self.in_flight[mailbox])
            too_many = self.in_flight[mailbox] > MAILBOX_CONCURRENCY
        try:
            if too_many:
                with self.lock:
                    self.state["calls"].append([request.method, request.path])
                return self._concurrency_refusal()
            return super().handle(request)
        finally:
            with self._in_flight_lock:
                self.in_flight[mailbox] -= 1

    def _concurrency_refusal(self) -> SandboxResponse:
        body = {
            "error": {
                "code": "ApplicationThrottled",
                "message": "Application is over its MailboxConcurrency limit.",
                "innerError": {"code": "MailboxConcurrency"},
            }
        }
        return SandboxResponse(429, body, {"Retry-After": "1"})

    def dispatch(self, request: SandboxRequest) -> SandboxResponse:
        try:
            if request.path.startswith("v1.0/"):
                return self._graph(request)
            return self._login(request)
        except GraphError as error:
            if request.path.startswith("v1.0/"):
                body = {
                    "error": {
                        "code": error.code,
                        "message": error.message,
                        "innerError": {"date": stamp(self.now())[:19], "request-id": str(uuid.uuid4())},
                    }
                }
                return SandboxResponse(error.status, body, error.headers)
            return SandboxResponse(error.status, self._login_error_body(error))

    @staticmethod
    def _root(request: SandboxRequest, below: str = "") -> str:
        """The sandbox's base URL as the client saw it (for links it must follow)."""
        parts = urlsplit(request.url)
        full_path = unquote(parts.path)
        base = full_path[: len(full_path) - len(unquote(request.path))].rstrip("/")
        return f"{parts.scheme}://{parts.netloc}{base}{below}"

    # === login host ================================================================================
    def _login(self, request: SandboxRequest) -> SandboxResponse:
        segments = request.path.strip("/").split("/")
        tenant_id = segments[0]
        rest = "/".join(segments[1:])
        if rest == "v2.0/adminconsent" and tenant_id in ("organizations", "common"):
            return self._admin_consent(request)
        if tenant_id not in self.state["tenants"] and not looks_like_tenant(unquote(tenant_id)):
            raise GraphError(
                400,
                "invalid_tenant",
                f"AADSTS900023: Specified tenant identifier '{unquote(tenant_id)}' is neither a valid DirectoryName "
                "nor a valid ObjectId.",
            )
        if tenant_id not in self.state["tenants"]:
            raise GraphError(
                400,
                "invalid_tenant",
                f"AADSTS90002: Tenant '{tenant_id}' not found. Check to make sure you have the correct tenant ID.",
            )
        if request.method == "GET" and rest == "v2.0/.well-known/openid-configuration":
            return SandboxResponse(200, self._openid_configuration(request, tenant_id))
        if request.method == "POST" and rest == "oauth2/v2.0/token":
            return self._issue_token(request, tenant_id)
        raise GraphError(404, "not_found", f"AADSTS90027: no such endpoint {request.path}")

    def _admin_consent(self, request: SandboxRequest) -> SandboxResponse:
        """Microsoft's admin-consent page, simulated: pick the tenant you administer, accept or cancel.

        As https://learn.microsoft.com/entra/identity-platform/v2-admin-consent: the browser comes back to
        redirect_uri with tenant, state and admin_consent=True, or with error and error_description.
        """
        args = {key: values[0] for key, values in request.query.items()}
        if request.method == "POST":
            args |= {key: values[0] for key, values in parse_qs(request.body.decode()).items()}
        client_id, redirect_uri = args.get("client_id", ""), args.get("redirect_uri", "")
        tenants = [t for t, record in self.state["tenants"].items() if record["client_id"] == client_id]
        if not redirect_uri.startswith(("http://", "https://")) or not tenants:
            raise GraphError(400, "invalid_request", f"AADSTS700016: Application '{client_id}' was not found.")
        if request.method == "POST":
            if args.get("decision") == "accept" and args.get("tenant") in tenants:
                self.state["tenants"][args["tenant"]]["consent"] = True
                answer = {"tenant": args["tenant"], "state": args.get("state", ""), "admin_consent": "True"}
            else:
                answer = {
                    "error": "access_denied",
                    "error_description": "AADSTS65004: The administrator declined to consent.",
                    "state": args.get("state", ""),
                }
            separator = "&" if "?" in redirect_uri else "?"
            return SandboxResponse(302, None, {"Location": f"{redirect_uri}{separator}{urlencode(answer)}"})
        hidden = "".join(
            f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">'
            for k, v in args.items()
            if k in ("client_id", "redirect_uri", "state", "scope")
        )
        choices = "".join(
            f'<p><input type="radio" name="tenant" id="t{i}" value="{html.escape(t)}"{" checked" if i == 0 else ""}>'
            f' <label for="t{i}">{html.escape(t)}</label></p>'
            for i, t in enumerate(tenants)
        )
        page = (
            '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Permissions requested</title></head>'
            "<body><h1>Permissions requested (sandbox)</h1><p>Accept for your organization: read and write "
            "calendars in all mailboxes, read all users' basic profiles.</p>"
            f'<form method="post">{hidden}{choices}'
            '<button type="submit" name="decision" value="accept">Accept</button> '
            '<button type="submit" name="decision" value="cancel">Cancel</button></form></body></html>'
        )
        return SandboxResponse(200, page, {"Content-Type": "text/html; charset=utf-8"})

    def _openid_configuration(self, request: SandboxRequest, tenant_id: str) -> dict:
        base = f"{self._root(request)}/{tenant_id}"
        return {
            "issuer": f"{base}/v2.0",
            "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
            "token_endpoint": f"{base}/oauth2/v2.0/token",
            "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt"],
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "tenant_region_scope": "EU",
        }

    def _issue_token(self, request: SandboxRequest, tenant_id: str) -> SandboxResponse:
        """Client credentials with the secret in the form body, as MSAL sends it (§8)."""
        form = {key: values[0] for key, values in parse_qs(request.body.decode()).items()}
        tenant = self.state["tenants"][tenant_id]
        if form.get("grant_type") != "client_credentials":
            raise GraphError(400, "unsupported_grant_type", "AADSTS70003: The app requested an unsupported grant type.")
        if form.get("client_id") != tenant["client_id"] or not tenant["consent"]:
            raise GraphError(
                400,
                "unauthorized_client",
                f"AADSTS700016: Application with identifier '{form.get('client_id')}' was not found in the directory "
                f"'{tenant_id}'. This can happen if the application has not been installed by the administrator "
                "of the tenant or consented to by any user in the tenant.",
            )
        if form.get("client_secret") != tenant["client_secret"]:
            raise GraphError(
                401,
                "invalid_client",
                "AADSTS7000215: Invalid client secret provided. Ensure the secret being sent in the request is "
                "the client secret value, not the client secret ID, for a secret added to app "
                f"'{form.get('client_id')}'.",
            )
        if not (form.get("scope") or "").endswith("/.default"):
            raise GraphError(400, "invalid_scope", "AADSTS1002012: The provided value for scope is not valid.")
        token = "sbx." + b64(uuid.uuid4().bytes + uuid.uuid4().bytes).rstrip("=")
        expires = self.now() + timedelta(seconds=3599)
        self.state["access_tokens"][token] = {"tenant": tenant_id, "expires": expires.isoformat()}
        return SandboxResponse(
            200, {"token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599, "access_token": token}
        )

    def _login_error_body(self, error: GraphError) -> dict:
        match = re.match(r"AADSTS(\d+)", error.message)
        return {
            "error": error.code,
            "error_description": error.message,
            "error_codes": [int(match.group(1))] if match else [],
            "timestamp": self.now().strftime("%Y-%m-%d %H:%M:%SZ"),
            "trace_id": str(uuid.uuid4()),
            "correlation_id": str(uuid.uuid4()),
        }

    # === graph host: routing =======================================================================
    def _graph(self, request: SandboxRequest) -> SandboxResponse:
        if "revoke_tokens_after" in self.state:
            if self.state["revoke_tokens_after"] <= 0:
                del self.state["revoke_tokens_after"]
                self.state["access_tokens"].clear()
            else:
                self.state["revoke_tokens_after"] -= 1
        tenant_id = self._authenticate(request)
        prefs = parse_prefer(request.header("Prefer"))
        segments = [unquote(s) for s in request.path.strip("/").split("/")[1:]]
        reply = self._route(request, tenant_id, prefs, segments)
        applied = [f'{k}="{prefs[k]}"' for k in ("outlook.timezone", "outlook.body-content-type") if k in prefs]
        if applied:
            reply.headers.setdefault("Preference-Applied", ", ".join(applied))
        return reply

    def _authenticate(self, request: SandboxRequest) -> str:
        scheme, _, token = request.header("Authorization").partition(" ")
        record = self.state["access_tokens"].get(token) if scheme.lower() == "bearer" else None
        if record is None or datetime.fromisoformat(record["expires"]) <= self.now():
            raise GraphError(401, "InvalidAuthenticationToken", "Access token is empty or invalid.")
        return record["tenant"]

    def _route(self, request: SandboxRequest, tenant_id: str, prefs: dict, seg: list[str]) -> SandboxResponse:
        method = request.method
        if seg == ["users"] and method == "GET":
            return self._list_users(request, tenant_id)
        if seg and seg[0] == "subscriptions":
            return self._subscriptions(request, tenant_id, prefs, seg[1:])
        if len(seg) < 2 or seg[0] != "users":
            raise GraphError(400, "BadRequest", f"Resource not found for the segment '{'/'.join(seg)}'.")
        user_id = self._mailbox(tenant_id, seg[1])
        rest = seg[2:]
        if rest[:1] == ["calendar"] and rest[1:2] == ["events"]:
            rest = rest[1:]  # /users/{id}/calendar/events is the same collection
        routes: dict[tuple, Callable[[], SandboxResponse]] = {
            ("GET", "calendar"): lambda: SandboxResponse(200, self._calendar(user_id)),
            ("GET", "calendarView/delta"): lambda: self._delta(request, user_id, prefs),
            ("GET", "events"): lambda: self._list_events(request, user_id, prefs),
            ("POST", "events"): lambda: self._post_event(request, user_id, prefs),
        }
        if len(rest) == 1 or rest[:2] == ["calendarView", "delta"]:
            handler = routes.get((method, "/".join(rest)))
        elif len(rest) >= 2 and rest[0] == "events":
            handler = self._event_route(request, user_id, prefs, rest[1], rest[2:])
        else:
            handler = None
        if handler is None:
            raise GraphError(400, "BadRequest", f"Unsupported request {method} {request.path}.")
        return handler()

    def _event_route(self, request, user_id, prefs, event_id, tail) -> Callable[[], SandboxResponse] | None:
        event_id = self._internal_id(event_id)
        method = request.method
        if not tail:
            return {
                "GET": lambda: SandboxResponse(200, self._get_event(request, user_id, event_id, prefs)),
                "PATCH": lambda: SandboxResponse(200, self._patch_event(request, user_id, event_id, prefs)),
                "DELETE": lambda: self._delete_event_reply(user_id, event_id),
            }.get(method)
        if tail == ["instances"] and method == "GET":
            return lambda: self._instances(request, user_id, event_id, prefs)
        if tail == ["cancel"] and method == "POST":
            return lambda: self._cancel_reply(request, user_id, event_id)
        return None

    def _mailbox(self, tenant_id: str, key: str) -> str:
        user_id = key if key in self.state["users"] else self._user_by_address(tenant_id, key)
        if user_id is None or self.state["users"][user_id]["tenant"] != tenant_id:
            raise GraphError(404, "ErrorInvalidUser", f"The requested user '{key}' is invalid.")
        if not self.state["users"][user_id]["in_policy"]:
            raise GraphError(403, "ErrorAccessDenied", "Access to OData is disabled.")
        return user_id

    def _page(self, request: SandboxRequest, items: list, default_size: int, prefs: dict | None = None) -> dict:
        """One page of a collection, `$top` (or odata.maxpagesize) items from the `$skiptoken` offset."""
        size = int(request.arg("$top") or (prefs or {}).get("odata.maxpagesize") or default_size)
        size = min(size, self.state.get("max_page_size") or size)
        offset = int(request.arg("$skiptoken") or 0)
        page: dict[str, Any] = {"value": items[offset : offset + size]}
        if offset + size < len(items):
            page["@odata.nextLink"] = page_link(request.url, str(offset + size))
        return page

    # === users =====================================================================================
    def _list_users(self, request: SandboxRequest, tenant_id: str) -> SandboxResponse:
        fields = (request.arg("$select") or "id,displayName,mail,userPrincipalName").split(",")
        users = [
            {name: user_id if name == "id" else user.get(name) for name in fields}
            for user_id, user in self.state["users"].items()
            if user["tenant"] == tenant_id
        ]
        return SandboxResponse(200, self._page(request, users, 100))

    def _calendar(self, user_id: str) -> dict:
        return {
            "id": ID_PREFIX + b64(user_id.encode()),
            "name": "Calendar",
            "isDefaultCalendar": True,
            "canEdit": True,
            "owner": self._address(user_id)["emailAddress"],
        }

    # === events: storage ===========================================================================
    def _stored(self, user_id: str, event_id: str) -> dict:
        event = self.state["events"].get(event_id)
        if event is None or event["owner"] != user_id:
            raise GraphError(404, "ErrorItemNotFound", "The specified object was not found in the store.")
        return event

    def _resolve(self, user_id: str, event_id: str) -> tuple[dict, str | None]:
        """(stored series or single, original start of the occurrence or None)."""
        occurrence = self._split_occurrence_id(event_id)
        if occurrence is None:
            return self._stored(user_id, event_id), None
        master = self._stored(user_id, occurrence[0])
        if occurrence[1] in master["deletedOccurrences"] or not self._is_original_start(master, occurrence[1]):
            raise GraphError(404, "ErrorItemNotFound", "The specified object was not found in the store.")
        return master, occurrence[1]

    def _validate(self, data: dict, *, creating: bool, occurrence: bool = False) -> None:
        allowed = OCCURRENCE_FIELDS if occurrence else WRITABLE_FIELDS
        for name in data:
            if name not in allowed and not (creating and name in CREATE_ONLY_FIELDS):
                raise GraphError(400, "ErrorInvalidPropertySet", f"The property '{name}' cannot be set on this event.")
        for name, values in ENUMS.items():
            if name in data and data[name] not in values:
                raise GraphError(400, "RequestBodyRead", f"Requested value '{data[name]}' was not found for {name}.")
        if creating and not ("start" in data and "end" in data):
            raise GraphError(400, "ErrorPropertyValidationFailure", "An event needs a start and an end.")

    def _apply(self, target: dict, data: dict) -> None:
        """Write Graph-shaped fields into a stored event (or an occurrence's overrides)."""
        for name, value in data.items():
            if name in ("start", "end"):
                target[name], zone_name = parse_graph_time(value)
                if name == "start":
                    target["timeZone"] = zone_name
            elif name == "body":
                target["body"] = {
                    "contentType": (value or {}).get("contentType", "text").lower(),
                    "content": (value or {}).get("content", ""),
                }
            elif name == "attendees":
                target["attendees"] = [self._attendee(item) for item in value or []]
            elif name == "location":
                target["location"] = self._location(value)
                target["locations"] = [target["location"]] if target["location"]["displayName"] else []
            elif name == "singleValueExtendedProperties":
                for prop in value or []:
                    target.setdefault("extended", {})[property_key(prop["id"])] = [prop["id"], prop["value"]]
            elif name != "@odata.type":
                target[name] = value
        if "start" in target and "end" in target and target["end"] < target["start"]:
            raise GraphError(400, "ErrorInvalidRequest", "The end of the event is before its start.")

    @staticmethod
    def _attendee(item: dict) -> dict:
        address = item.get("emailAddress") or {}
        return {
            "type": item.get("type", "required"),
            "status": item.get("status") or {"response": "none", "time": NO_TIME},
            "emailAddress": {
                "name": address.get("name") or address.get("address", ""),
                "address": address.get("address", ""),
            },
        }

    @staticmethod
    def _location(value: dict | None) -> dict:
        name = (value or {}).get("displayName") or ""
        if not name:
            return {
                "displayName": "",
                "locationType": "default",
                "uniqueIdType": "unknown",
                "address": {},
                "coordinates": {},
            }
        return {
            "displayName": name,
            "locationType": "default",
            "uniqueId": name,
            "uniqueIdType": "private",
            "address": {},
            "coordinates": {},
        }

    def _check_whole_event(self, event: dict) -> None:
        if event["recurrence"]:
            build_rule(event["recurrence"], self._local_start(event))  # raises on a bad pattern
        if event["isAllDay"]:
            # All-day events must start and end at midnight of their zone (§1); the error code is a guess.
            tz = zone(event["timeZone"])
            for name in ("start", "end"):
                if utc_from_text(event[name]).astimezone(tz).time() != time():
                    raise GraphError(
                        400, "ErrorPropertyValidationFailure", "All-day events must start and end at midnight."
                    )

    def _touch(self, target: dict) -> None:
        target["changeKey"] = self._change_key()
        target["lastModifiedDateTime"] = stamp(self.now())
        target["modifiedSeq"] = self.state["seq"]  # lets delta tell what changed since a token

    # === events: create ============================================================================
    def _create(self, user_id: str, data: dict) -> dict:
        """The new event. A repeated transactionId in the same mailbox returns the event created first:
        Graph's answer to a duplicate is UNCONFIRMED (§2); this is the behaviour the docs' wording implies."""
        transaction_id = data.get("transactionId")
        transaction = f"{user_id} {transaction_id}"
        if transaction_id:
            first = self.state["events"].get(self._events_by_transaction().get(transaction, ""))
            if first is not None:
                return first
        self._validate(data, creating=True)
        now = stamp(self.now())
        event = {
            "id": self._new_id(),
            "owner": user_id,
            "source": None,
            "createdDateTime": now,
            "iCalUId": ICAL_PREFIX + "00000000" + uuid.uuid4().hex.upper() + "00000000",
            "subject": "",
            "body": {"contentType": "text", "content": ""},
            "isAllDay": False,
            "sensitivity": "normal",
            "showAs": "busy",
            "importance": "normal",
            "isOrganizer": True,
            "isCancelled": False,
            "responseStatus": {"response": "organizer", "time": NO_TIME},
            "organizer": self._address(user_id),
            "attendees": [],
            "location": self._location(None),
            "locations": [],
            "recurrence": None,
            "transactionId": None,
            "extended": {},
            "exceptions": {},
            "deletedOccurrences": [],
        }
        self._apply(event, data)
        self._check_whole_event(event)
        event["type"] = "seriesMaster" if event["recurrence"] else "singleInstance"
        self._touch(event)
        self.state["events"][event["id"]] = event
        if transaction_id:
            self._events_by_transaction()[transaction] = event["id"]
        self._notify(user_id, event["id"], "created")
        if event["attendees"]:
            self._send_mail("invitation", event, self._attendee_addresses(event))
            self._sync_copies(event)
        return event

    def _events_by_transaction(self) -> dict[str, str]:
        """Event ids by "<mailbox> <transactionId>": a repeated create is found without reading every event
        (a first sync of 10,000 events made that O(n²)). Transaction ids are set by a create only
        (CREATE_ONLY_FIELDS); an id whose event was deleted since finds nothing, as the events alone would.
        Built from the events once for a state stored before it was kept."""
        if "transactions" not in self.state:
            self.state["transactions"] = {
                f"{event['owner']} {event['transactionId']}": event["id"]
                for event in self.state["events"].values()
                if event.get("transactionId")
            }
        return self.state["transactions"]

    def _post_event(self, request: SandboxRequest, user_id: str, prefs: dict) -> SandboxResponse:
        event = self._create(user_id, request.json() or {})
        return SandboxResponse(201, self._render(self._view(event), prefs))

    # === events: update ============================================================================
    def _update(self, user_id: str, event_id: str, patch: dict) -> dict:
        master, original_start = self._resolve(user_id, event_id)
        self._validate(patch, creating=False, occurrence=original_start is not None)
        before = self._snapshot_for_mail(master)
        if original_start is None:
            self._update_series_or_single(master, patch)
        else:
            self._update_occurrence(master, original_start, patch)
        if master["isOrganizer"] and (before["attendees"] or master["attendees"]):
            self._mail_meeting_changes(master, before, patch, original_start)
            self._sync_copies(master)
        return master if original_start is None else self._occurrence_view(master, original_start)

    def _update_occurrence(self, master: dict, original_start: str, patch: dict) -> None:
        overrides = detached(master["exceptions"].get(original_start, {}))
        self._apply(overrides, patch)
        self._check_between_neighbours(master, original_start, overrides)
        self._touch(overrides)
        master["exceptions"][original_start] = overrides
        self._notify(master["owner"], self._occurrence_id(master["id"], original_start), "updated")

    def _check_between_neighbours(self, master: dict, original_start: str, overrides: dict) -> None:
        """Exchange refuses to move an occurrence onto or past its neighbours (§2)."""
        if "start" not in overrides:
            return
        moved_to = overrides["start"]
        span = timedelta(days=400)  # enough to reach the neighbours of a yearly series
        around = utc_from_text(original_start)
        neighbours = [
            other
            for other in self._original_starts(master, around - span, around + span)
            if other != original_start and other not in master["deletedOccurrences"]
        ]
        earlier = max((o for o in neighbours if o < original_start), default=None)
        later = min((o for o in neighbours if o > original_start), default=None)
        earlier = earlier and self._occurrence_view(master, earlier)["start"]
        later = later and self._occurrence_view(master, later)["start"]
        if (earlier and moved_to <= earlier) or (later and moved_to >= later):
            raise GraphError(
                400, "ErrorOccurrenceCrossingBoundary", "An occurrence cannot overlap or skip past its neighbours."
            )

    def _update_series_or_single(self, event: dict, patch: dict) -> None:
        pattern_before = (event["start"], event["end"], event["recurrence"])
        updated = detached(event)
        self._apply(updated, patch)
        self._check_whole_event(updated)
        event.update(updated)
        if (event["start"], event["end"], event["recurrence"]) != pattern_before:
            # Exchange drops a series' exceptions and deleted occurrences when its pattern or time changes.
            event["exceptions"], event["deletedOccurrences"] = {}, []
        event["type"] = "seriesMaster" if event["recurrence"] else "singleInstance"
        self._touch(event)
        self._notify(event["owner"], event["id"], "updated")

    def _patch_event(self, request: SandboxRequest, user_id: str, event_id: str, prefs: dict) -> dict:
        updated = self._update(user_id, event_id, request.json() or {})
        return self._render(updated if "originalStart" in updated else self._view(updated), prefs)

    # === events: delete and cancel =================================================================
    def _delete(self, user_id: str, event_id: str, *, comment: str = "", cancelling: bool = False) -> None:
        master, original_start = self._resolve(user_id, event_id)
        if cancelling and not master["isOrganizer"]:
            raise GraphError(400, "ErrorInvalidRequest", "You need to be an organizer to cancel a meeting.")
        is_meeting = master["isOrganizer"] and master["attendees"]
        if original_start is not None:
            # No tombstone: the occurrence just stops appearing in delta and instances.
            master["exceptions"].pop(original_start, None)
            master["deletedOccurrences"].append(original_start)
            self._notify(user_id, event_id, "deleted")
        else:
            del self.state["events"][master["id"]]
            if not master["recurrence"]:  # a series' tombstones are those of its occurrences
                self.state["tombstones"] = [*self.state["tombstones"][-499:], [master["id"], user_id, self._next()]]
            self._notify(user_id, master["id"], "deleted")
        if is_meeting:
            # Deleting a meeting on the organizer's calendar cancels it for the attendees (§2).
            self._send_mail("cancellation", master, self._attendee_addresses(master), original_start, comment)
            self._sync_copies(master, cancelled=original_start is None)

    def _delete_event_reply(self, user_id: str, event_id: str) -> SandboxResponse:
        self._delete(user_id, event_id)
        return SandboxResponse(204)

    def _cancel_reply(self, request: SandboxRequest, user_id: str, event_id: str) -> SandboxResponse:
        self._delete(user_id, event_id, comment=(request.json() or {}).get("comment", ""), cancelling=True)
        return SandboxResponse(202)

    # === meetings: attendee copies and sent mail ====================================================
    @staticmethod
    def _attendee_addresses(event: dict) -> list[str]:
        organizer = event["organizer"]["emailAddress"]["address"].lower()
        return [
            a["emailAddress"]["address"]
            for a in event["attendees"]
            if a["emailAddress"]["address"].lower() != organizer
        ]

    @staticmethod
    def _snapshot_for_mail(event: dict) -> dict:
        return {"attendees": [a["emailAddress"]["address"].lower() for a in event["attendees"]]}

    def _mail_meeting_changes(self, event: dict, before: dict, patch: dict, original_start: str | None) -> None:
        """What Exchange sends after an organizer's PATCH (§2): a PATCH with only attendees goes to the
        changed attendees only (invitation to the added, cancellation to the removed); a change of time,
        place or pattern goes to everyone as an update. Other changes (subject, body) send nothing here."""
        now = {a.lower(): a for a in self._attendee_addresses(event)}
        added = [address for key, address in now.items() if key not in before["attendees"]]
        removed = [
            a
            for a in before["attendees"]
            if a not in now and a != event["organizer"]["emailAddress"]["address"].lower()
        ]
        self._send_mail("invitation", event, added, original_start)
        self._send_mail("cancellation", event, removed, original_start)
        if set(patch) & MEETING_UPDATE_FIELDS:
            self._send_mail("update", event, [a for a in now.values() if a not in added], original_start)

    def _send_mail(
        self, kind: str, event: dict, to: Iterable[str], original_start: str | None = None, comment: str = ""
    ) -> None:
        for address in to:
            self.state["sent_mail"].append(
                {
                    "kind": kind,
                    "from": event["organizer"]["emailAddress"]["address"],
                    "to": address,
                    "iCalUId": event["iCalUId"],
                    "subject": event["subject"],
                    "occurrence": original_start,
                    "comment": comment,
                    "at": self.now().isoformat(),
                }
            )

    def _sync_copies(self, event: dict, *, cancelled: bool = False) -> None:
        """Keep the attendees' copies (same tenant) in step with the organizer's meeting."""
        tenant_id = self.state["users"][event["owner"]]["tenant"]
        invited = (
            set()
            if cancelled
            else {self._user_by_address(tenant_id, a) for a in self._attendee_addresses(event)} - {None, event["owner"]}
        )
        copies = {e["owner"]: e for e in self.state["events"].values() if e["source"] == event["id"]}
        for user_id in invited - set(copies):
            self._create_copy(event, user_id)
        for user_id, copy in copies.items():
            if user_id in invited:
                self._refresh_copy(copy, event)
            elif not copy["isCancelled"]:
                copy["isCancelled"] = True
                copy["subject"] = f"Canceled: {event['subject']}"
                self._touch(copy)
                self._notify(user_id, copy["id"], "updated")

    def _create_copy(self, event: dict, user_id: str) -> None:
        copy = detached(
            {key: value for key, value in event.items() if key in SHARED_WITH_ATTENDEES or key == "iCalUId"}
        )
        copy.update(
            id=self._new_id(),
            owner=user_id,
            source=event["id"],
            createdDateTime=stamp(self.now()),
            showAs="tentative",
            isOrganizer=False,
            isCancelled=False,
            responseStatus={"response": "none", "time": NO_TIME},
            transactionId=None,
            extended={},
        )
        self._touch(copy)
        self.state["events"][copy["id"]] = copy
        self._notify(user_id, copy["id"], "created")

    def _refresh_copy(self, copy: dict, event: dict) -> None:
        shared = detached({key: event[key] for key in SHARED_WITH_ATTENDEES})
        if {key: copy.get(key) for key in SHARED_WITH_ATTENDEES} != shared or copy["isCancelled"]:
            copy.update(shared, isCancelled=False)
            self._touch(copy)
            self._notify(copy["owner"], copy["id"], "updated")

    # === recurrence ================================================================================
    @staticmethod
    def _local_start(event: dict) -> datetime:
        return utc_from_text(event["start"]).astimezone(zone(event["timeZone"])).replace(tzinfo=None)

    def _original_starts(self, master: dict, after: datetime, before: datetime) -> list[str]:
        """Original starts (naive UTC text) of the occurrences that may touch [after, before)."""
        tz = zone(master["timeZone"])
        duration = utc_from_text(master["end"]) - utc_from_text(master["start"])
        rule = build_rule(master["recurrence"], self._local_start(master))
        low = (after - duration - timedelta(days=1)).astimezone(tz).replace(tzinfo=None)
        high = (before + timedelta(days=1)).astimezone(tz).replace(tzinfo=None)
        return [utc_text(local.replace(tzinfo=tz)) for local in rule.between(low, high, inc=True)]

    def _is_original_start(self, master: dict, original_start: str) -> bool:
        if not master["recurrence"]:
            return False
        moment = utc_from_text(original_start)
        return original_start in self._original_starts(master, moment, moment + timedelta(seconds=1))

    def _occurrences(self, master: dict, after: datetime, before: datetime) -> list[dict]:
        starts = set(self._original_starts(master, after, before)) | set(master["exceptions"])
        views = [self._occurrence_view(master, s) for s in sorted(starts) if s not in master["deletedOccurrences"]]
        return [v for v in views if utc_from_text(v["start"]) < before and utc_from_text(v["end"]) > after]

    # === views: what Graph would show =============================================================
    def _view(self, event: dict) -> dict:
        """A stored single or series master as an event view (internal, UTC text times)."""
        return {**event, "seriesMasterId": None, "originalStart": None}

    def _occurrence_view(self, master: dict, original_start: str) -> dict:
        overrides = master["exceptions"].get(original_start)
        duration = utc_from_text(master["end"]) - utc_from_text(master["start"])
        view = {
            **master,
            "id": self._occurrence_id(master["id"], original_start),
            "type": "exception" if overrides else "occurrence",
            "seriesMasterId": master["id"],
            "originalStart": original_start,
            "recurrence": None,
            "iCalUId": self._occurrence_ical_uid(master["iCalUId"], original_start),
            "start": original_start,
            "end": utc_text(utc_from_text(original_start) + duration),
            "transactionId": None,
        }
        if overrides:
            view.update(overrides)
            mixed = hashlib.sha1((master["changeKey"] + overrides["changeKey"]).encode()).digest()
            view["changeKey"] = base64.b64encode(mixed[:16]).decode()
            view["lastModifiedDateTime"] = max(master["lastModifiedDateTime"], overrides["lastModifiedDateTime"])
        return view

    @staticmethod
    def _occurrence_ical_uid(series_uid: str, original_start: str) -> str:
        # Exchange's global object id carries the instance date in bytes 16-19 (year, month, day).
        day = date.fromisoformat(original_start[:10])
        return series_uid[:32] + f"{day.year:04X}{day.month:02X}{day.day:02X}" + series_uid[40:]

    def _render(self, view: dict, prefs: dict, *, expand: str | None = None) -> dict:
        """Graph JSON for an event view, honouring the Prefer header (§2)."""
        immutable = prefs.get("idtype", "").lower() == "immutableid"
        tz_name = prefs.get("outlook.timezone", "UTC")
        body = view["body"]
        text = body["content"] if body["contentType"] == "text" else html_to_text(body["content"])
        if prefs.get("outlook.body-content-type", "html").lower() == "text":
            shown_body = {"contentType": "text", "content": text}
        else:
            shown_body = (
                body if body["contentType"] == "html" else {"contentType": "html", "content": text_to_html(text)}
            )
        rendered = {
            "@odata.etag": f'W/"{view["changeKey"]}"',
            "id": self._public_id(view["id"], immutable),
            "createdDateTime": view["createdDateTime"],
            "lastModifiedDateTime": view["lastModifiedDateTime"],
            "changeKey": view["changeKey"],
            "categories": view.get("categories") or [],
            "originalStartTimeZone": view["timeZone"],
            "originalEndTimeZone": view["timeZone"],
            "iCalUId": view["iCalUId"],
            "reminderMinutesBeforeStart": view.get("reminderMinutesBeforeStart", 15),
            "isReminderOn": view.get("isReminderOn", True),
            "hasAttachments": False,
            "subject": view["subject"],
            "bodyPreview": text[:255],
            "importance": view["importance"],
            "sensitivity": view["sensitivity"],
            "isAllDay": view["isAllDay"],
            "isCancelled": view["isCancelled"],
            "isOrganizer": view["isOrganizer"],
            "responseRequested": view.get("responseRequested", True),
            "seriesMasterId": self._public_id(view["seriesMasterId"], immutable),
            "showAs": view["showAs"],
            "type": view["type"],
            "isDraft": False,
            "responseStatus": view["responseStatus"],
            "body": shown_body,
            "start": self._render_time(view["start"], tz_name),
            "end": self._render_time(view["end"], tz_name),
            "location": view["location"],
            "locations": view["locations"],
            "recurrence": view["recurrence"],
            "attendees": view["attendees"],
            "organizer": view["organizer"],
        }
        if view["originalStart"]:
            rendered["originalStart"] = view["originalStart"] + "Z"
        if view.get("transactionId"):
            rendered["transactionId"] = view["transactionId"]  # returned only if it was set (§1)
        if expand:
            rendered["singleValueExtendedProperties"] = self._expanded_properties(view, expand)
        return rendered

    @staticmethod
    def _render_time(utc: str, tz_name: str) -> dict:
        local = utc_from_text(utc).astimezone(zone(tz_name))
        return {"dateTime": local.strftime("%Y-%m-%dT%H:%M:%S") + ".0000000", "timeZone": tz_name}

    @staticmethod
    def _expanded_properties(view: dict, expand: str) -> list[dict]:
        match = EXTENDED_EXPAND.match(expand)
        if not match:
            raise GraphError(400, "BadRequest", f"Unsupported $expand: {expand}")
        found = view.get("extended", {}).get(property_key(odata_unquote(match.group(1))))
        return [{"id": found[0], "value": found[1]}] if found else []

    # === events: reads =============================================================================
    def _get_event(self, request: SandboxRequest, user_id: str, event_id: str, prefs: dict) -> dict:
        master, original_start = self._resolve(user_id, event_id)
        view = self._view(master) if original_start is None else self._occurrence_view(master, original_start)
        return self._render(view, prefs, expand=request.arg("$expand"))

    def _list_events(self, request: SandboxRequest, user_id: str, prefs: dict) -> SandboxResponse:
        """Singles and series masters (no occurrences), optionally filtered by an extended property (§6)."""
        events = [e for e in self.state["events"].values() if e["owner"] == user_id]
        condition = request.arg("$filter")
        if condition:
            match = EXTENDED_FILTER.match(condition.strip())
            if not match:
                raise GraphError(400, "ErrorInvalidUrlQueryFilter", f"Unsupported $filter: {condition}")
            key, value = property_key(odata_unquote(match.group(2))), odata_unquote(match.group(3)).lower()
            events = [e for e in events if str(e["extended"].get(key, ["", ""])[1]).lower() == value]
        rendered = [self._render(self._view(e), prefs, expand=request.arg("$expand")) for e in events]
        return SandboxResponse(200, self._page(request, rendered, 10))

    def _instances(self, request: SandboxRequest, user_id: str, master_id: str, prefs: dict) -> SandboxResponse:
        master = self._stored(user_id, master_id)
        after = parse_query_time(request.arg("startDateTime"), "startDateTime")
        before = parse_query_time(request.arg("endDateTime"), "endDateTime")
        views = self._occurrences(master, after, before) if master["recurrence"] else []
        rendered = [self._render(view, prefs) for view in views]
        return SandboxResponse(200, self._page(request, rendered, 10))

    def _window_views(self, user_id: str, after: datetime, before: datetime) -> list[dict]:
        """What calendarView shows: singles and the occurrences/exceptions of series, never masters (§3)."""
        views = []
        for event in self.state["events"].values():
            if event["owner"] != user_id:
                continue
            if event["recurrence"]:
                views.extend(self._occurrences(event, after, before))
            elif utc_from_text(event["start"]) < before and utc_from_text(event["end"]) > after:
                views.append(self._view(event))
        return sorted(views, key=lambda view: (view["start"], view["id"]))

    # === calendarView/delta (§3) ===================================================================
    def _delta(self, request: SandboxRequest, user_id: str, prefs: dict) -> SandboxResponse:
        skip, delta = request.arg("$skiptoken"), request.arg("$deltatoken")
        token = skip or delta
        if token:
            record = self.state["sync_tokens"].get(token)
            if record is None or record["user"] != user_id or record["kind"] != ("skip" if skip else "delta"):
                raise GraphError(410, "syncStateNotFound", "The sync state generation is not found.")
            if skip:
                return self._delta_page(request, user_id, record)
            after, before = utc_from_text(record["start"]), utc_from_text(record["end"])
            return self._delta_round(request, user_id, prefs, after, before, record["seen"], record["as_of"])
        after = parse_query_time(request.arg("startDateTime"), "startDateTime")
        before = parse_query_time(request.arg("endDateTime"), "endDateTime")
        return self._delta_round(request, user_id, prefs, after, before, {}, None)

    def _delta_round(
        self, request, user_id, prefs, after: datetime, before: datetime, seen: dict, since: int | None
    ) -> SandboxResponse:
        current = {view["id"]: view for view in self._window_views(user_id, after, before)}
        changed = [self._render(v, prefs) for i, v in current.items() if seen.get(i) != v["changeKey"]]
        gone = [i for i in seen if i not in current and not self._deleted_occurrence(i)]
        if since is not None:
            gone += [i for i in self._changed_outside(user_id, current, since) if i not in gone]
        immutable = prefs.get("idtype", "").lower() == "immutableid"
        removed = [
            {
                "@odata.type": "#microsoft.graph.event",
                "id": self._public_id(i, immutable),
                "@removed": {"reason": "deleted"},
            }
            for i in gone
        ]
        record = {
            "kind": "skip",
            "user": user_id,
            "start": utc_text(after),
            "end": utc_text(before),
            "seen": {i: v["changeKey"] for i, v in current.items()},
            "as_of": self.state["seq"],
            "items": removed + changed,
            "offset": 0,
            "size": min(int(prefs.get("odata.maxpagesize") or DELTA_PAGE_SIZE), self.state["max_page_size"] or 1000),
        }
        return self._delta_page(request, user_id, record)

    def _changed_outside(self, user_id: str, current: dict, since: int) -> list[str]:
        """Singles added, changed or deleted outside the window since the token: Graph reports those as
        `@removed` too (§3), so a client sees ids it never had."""
        changed = [
            e["id"]
            for e in self.state["events"].values()
            if e["owner"] == user_id and not e["recurrence"] and e["id"] not in current and e["modifiedSeq"] > since
        ]
        deleted = [i for i, owner, seq in self.state["tombstones"] if owner == user_id and seq > since]
        return changed + deleted

    def _deleted_occurrence(self, event_id: str) -> bool:
        """A deleted occurrence of a series that still exists: Graph sends no tombstone for it."""
        occurrence = self._split_occurrence_id(event_id)
        master = self.state["events"].get(occurrence[0]) if occurrence else None
        return master is not None and occurrence[1] in master["deletedOccurrences"]

    def _delta_page(self, request: SandboxRequest, user_id: str, record: dict) -> SandboxResponse:
        offset, size = record["offset"], record["size"]
        replay = 1 if offset and self.state["delta_replays"] else 0  # the previous page's last change again
        page_items = record["items"][offset - replay : offset + size]
        link = f"{self._root(request)}/v1.0/users/{user_id}/calendarView/delta"
        body: dict[str, Any] = {
            "@odata.context": f"{self._root(request)}/v1.0/$metadata#Collection(event)",
            "value": page_items,
        }
        if offset + size < len(record["items"]):
            token = self._store_sync_token({**record, "offset": offset + size})
            body["@odata.nextLink"] = f"{link}?$skiptoken={token}"
        else:
            token = self._store_sync_token(
                {key: record[key] for key in ("user", "start", "end", "seen", "as_of")} | {"kind": "delta"}
            )
            body["@odata.deltaLink"] = f"{link}?$deltatoken={token}"
        return SandboxResponse(200, body)

    def _store_sync_token(self, record: dict) -> str:
        token = b64(uuid.uuid4().bytes + self._next().to_bytes(4, "big")).rstrip("=")
        self.state["sync_tokens"][token] = record
        mine = [t for t, r in self.state["sync_tokens"].items() if r["user"] == record["user"]]
        for old in mine[:-TOKENS_KEPT_PER_MAILBOX]:
            del self.state["sync_tokens"][old]
        return token

    # === subscriptions and notifications (§4) ======================================================
    def _subscriptions(self, request: SandboxRequest, tenant_id: str, prefs: dict, rest: list[str]) -> SandboxResponse:
        if not rest and request.method == "POST":
            return SandboxResponse(201, self._create_subscription(request.json() or {}, tenant_id, prefs))
        subscription = self.state["subscriptions"].get(rest[0]) if len(rest) == 1 else None
        if subscription is None or subscription["tenant"] != tenant_id:
            raise GraphError(404, "ResourceNotFound", "The object was not found.")
        if request.method == "GET":
            return SandboxResponse(200, self._public_subscription(subscription))
        if request.method == "PATCH":
            expires = self._subscription_expiry((request.json() or {}).get("expirationDateTime"))
            subscription["expirationDateTime"] = expires
            return SandboxResponse(200, self._public_subscription(subscription))
        if request.method == "DELETE":
            del self.state["subscriptions"][rest[0]]
            return SandboxResponse(204)
        raise GraphError(405, "BadRequest", "Method not allowed.")

    def _create_subscription(self, data: dict, tenant_id: str, prefs: dict) -> dict:
        match = re.fullmatch(r"/?users/([^/]+)/events", data.get("resource") or "", re.IGNORECASE)
        if not match:
            raise GraphError(400, "InvalidRequest", "Only /users/{id}/events subscriptions are supported here.")
        user_id = self._mailbox(tenant_id, match.group(1))
        for url in (data.get("notificationUrl"), data.get("lifecycleNotificationUrl")):
            if url is not None and not str(url).startswith("https://"):
                raise GraphError(400, "InvalidRequest", "The notification URL must use https.")
        if len(data.get("clientState") or "") > 128:
            raise GraphError(400, "InvalidRequest", "clientState is limited to 128 characters.")
        change_types = set((data.get("changeType") or "").split(","))
        if not change_types or not change_types <= {"created", "updated", "deleted"}:
            raise GraphError(400, "InvalidRequest", "changeType must be created, updated and/or deleted.")
        if self.state.get("deliver_http"):
            for url in {data.get("notificationUrl"), data.get("lifecycleNotificationUrl")} - {None}:
                self._validate_endpoint(url)
        subscription_id = str(uuid.uuid4())
        self.state["subscriptions"][subscription_id] = {
            "id": subscription_id,
            "tenant": tenant_id,
            "user": user_id,
            "immutable": prefs.get("idtype", "").lower() == "immutableid",
            "resource": data["resource"],
            "applicationId": self.state["tenants"][tenant_id]["client_id"],
            "changeType": data["changeType"],
            "clientState": data.get("clientState"),
            "notificationUrl": data.get("notificationUrl"),
            "lifecycleNotificationUrl": data.get("lifecycleNotificationUrl"),
            "expirationDateTime": self._subscription_expiry(data.get("expirationDateTime")),
            "creatorId": str(uuid.uuid4()),
            "latestSupportedTlsVersion": "v1_2",
            "includeResourceData": False,
        }
        return self._public_subscription(self.state["subscriptions"][subscription_id])

    @staticmethod
    def _validate_endpoint(url: str) -> None:
        """Graph's handshake (graph-api.md §4): the endpoint must echo the decoded token as text/plain in 10 s."""
        token = f"Validation: Testing client application reachability for subscription Request-Id: {uuid.uuid4()}"
        try:
            reply = delivery_session().post(
                url,
                params={"validationToken": token},
                headers={"Content-Type": "text/plain; charset=utf-8"},
                timeout=10,
            )
        except requests.RequestException as exc:
            raise GraphError(400, "InvalidRequest", f"Subscription validation request failed: {exc}") from None
        if reply.status_code != 200 or not reply.headers.get("Content-Type", "").startswith("text/plain"):
            raise GraphError(400, "InvalidRequest", "Subscription validation request failed. Response must be 200.")
        if reply.text != token:
            raise GraphError(400, "InvalidRequest", "Subscription validation request failed: wrong token echoed.")

    def _subscription_expiry(self, value: str | None) -> str:
        expires = parse_query_time(value, "expirationDateTime")
        if expires <= self.now():
            raise GraphError(400, "InvalidRequest", "Subscription expiration must be in the future.")
        if expires > self.now() + timedelta(minutes=MAX_SUBSCRIPTION_MINUTES):
            raise GraphError(
                400,
                "InvalidRequest",
                f"Subscription expiration can only be {MAX_SUBSCRIPTION_MINUTES} minutes in the future.",
            )
        return stamp(expires)

    @staticmethod
    def _public_subscription(subscription: dict) -> dict:
        return {k: v for k, v in subscription.items() if k not in ("tenant", "user", "immutable")}

    def _notify(self, user_id: str, event_id: str, change_type: str) -> None:
        for subscription in list(self.state["subscriptions"].values()):
            if subscription["user"] != user_id or change_type not in subscription["changeType"].split(","):
                continue
            if parse_stamp(subscription["expirationDateTime"]) <= self.now():
                continue
            shown_id = self._public_id(event_id, subscription["immutable"])
            resource = f"Users/{user_id}/Events/{shown_id}"
            self._deliver(
                {
                    "value": [
                        {
                            "subscriptionId": subscription["id"],
                            "subscriptionExpirationDateTime": subscription["expirationDateTime"],
                            "changeType": change_type,
                            "clientState": subscription["clientState"],
                            "tenantId": subscription["tenant"],
                            "resource": resource,
                            "resourceData": {
                                "@odata.type": "#Microsoft.Graph.Event",
                                "@odata.id": resource,
                                "id": shown_id,
                            },
                        }
                    ]
                },
                url=subscription["notificationUrl"],
            )

    def send_lifecycle_event(self, subscription_id: str, lifecycle_event: str) -> None:
        """Deliver a lifecycle notification: reauthorizationRequired, subscriptionRemoved or missed (§4)."""
        subscription = self.state["subscriptions"][subscription_id]
        if lifecycle_event == "subscriptionRemoved":
            del self.state["subscriptions"][subscription_id]
        self._deliver(
            {
                "value": [
                    {
                        "subscriptionId": subscription_id,
                        "subscriptionExpirationDateTime": subscription["expirationDateTime"],
                        "tenantId": subscription["tenant"],
                        "clientState": subscription["clientState"],
                        "lifecycleEvent": lifecycle_event,
                    }
                ]
            },
            url=subscription.get("lifecycleNotificationUrl") or subscription["notificationUrl"],
        )

    def _deliver(self, payload: dict, url: str | None = None) -> None:
        self.state["notifications"].append(payload)
        if self.state.get("deliver_http") and url:
            # Graph retries a failed delivery for a while; the sandbox keeps only the record above.
            if self.deferring:
                self.outgoing.append(Outgoing(url, payload))
            else:
                post_outgoing(Outgoing(url, payload))
        if self.on_notification is not None:
            self.on_notification(payload)

    def take_outgoing(self) -> list[Outgoing]:
        taken, self.outgoing = self.outgoing, []
        return taken

    # === acting as a person in Outlook (no request is counted) =====================================
    def person_create_event(
        self,
        user_id: str,
        subject: str,
        start: datetime | date,
        end: datetime | date,
        *,
        body: str = "",
        private: bool = False,
        all_day: bool = False,
        attendees: Iterable[str] = (),
        recurrence: dict | None = None,
        location: str = "",
        time_zone: str = "UTC",
    ) -> str:
        """Create an event as the mailbox owner would in Outlook; a meeting sends its invitations."""
        data = self._person_fields(
            subject=subject, start=start, end=end, body=body, private=private, all_day=all_day,
            attendees=list(attendees), recurrence=recurrence, location=location, time_zone=time_zone,
        )  # fmt: skip
        with self.lock:
            event = self._create(user_id, data)
        return event["id"]

    def person_edit_event(self, user_id: str, event_id: str, **fields: Any) -> None:
        """Edit as in Outlook. Fields: subject, body, start, end, location, private, all_day, attendees,
        recurrence, show_as, sensitivity, time_zone (for start/end)."""
        with self.lock:
            self._update(user_id, event_id, self._person_fields(**fields))

    def person_edit_occurrence(self, user_id: str, series_id: str, occurrence_date: date, **fields: Any) -> str:
        """Edit one occurrence (it becomes an exception); returns its id."""
        occurrence_id = self.occurrence_id(user_id, series_id, occurrence_date)
        self.person_edit_event(user_id, occurrence_id, **fields)
        return occurrence_id

    def person_delete_occurrence(self, user_id: str, series_id: str, occurrence_date: date) -> None:
        with self.lock:
            self._delete(user_id, self.occurrence_id(user_id, series_id, occurrence_date))

    def person_delete_event(self, user_id: str, event_id: str) -> None:
        """Delete an event, a whole series or (by its id) an occurrence; an organizer's meeting is cancelled."""
        with self.lock:
            self._delete(user_id, event_id)

    def person_accept(self, user_id: str, event_id: str) -> None:
        """An attendee accepts: their copy turns busy and the organizer's attendee list records it."""
        with self.lock:
            copy = self._stored(user_id, event_id)
            organizer_event = self.state["events"].get(copy["source"] or "")
            copy["responseStatus"] = {"response": "accepted", "time": stamp(self.now())}
            copy["showAs"] = "busy"
            self._touch(copy)
            self._notify(user_id, event_id, "updated")
            if organizer_event is None:
                return
            address = self.state["users"][user_id]["mail"].lower()
            for attendee in organizer_event["attendees"]:
                if attendee["emailAddress"]["address"].lower() == address:
                    attendee["status"] = {"response": "accepted", "time": stamp(self.now())}
            self._touch(organizer_event)
            self._notify(organizer_event["owner"], organizer_event["id"], "updated")
            self._send_mail(
                "response",
                {**copy, "organizer": self._address(user_id)},
                [copy["organizer"]["emailAddress"]["address"]],
            )

    def person_receive_invitation(
        self, user_id: str, organizer: str, organizer_name: str, subject: str, start: datetime, end: datetime, **fields
    ) -> str:
        """An invitation from outside the tenant arrives in the mailbox: its copy, organized by `organizer`.

        `fields` as person_create_event's (body, location, time_zone, ...); the mailbox is the one attendee."""
        data = self._person_fields(subject=subject, start=start, end=end, **fields)
        with self.lock:
            event = self._create(user_id, data)
            event.update(
                isOrganizer=False,
                organizer={"emailAddress": {"name": organizer_name, "address": organizer}},
                attendees=[self._attendee(self._address(user_id))],
                showAs="tentative",
                responseStatus={"response": "none", "time": NO_TIME},
            )
            self._touch(event)
        return event["id"]

    def occurrence_id(self, user_id: str, series_id: str, occurrence_date: date) -> str:
        """The id of the occurrence of a series that starts on `occurrence_date` (in the series' zone)."""
        master = self._stored(user_id, self._internal_id(series_id))
        tz = zone(master["timeZone"])
        midnight = datetime.combine(occurrence_date, time(), tzinfo=tz)
        for original_start in self._original_starts(master, midnight, midnight + timedelta(days=1)):
            if utc_from_text(original_start).astimezone(tz).date() == occurrence_date:
                return self._occurrence_id(master["id"], original_start)
        raise GraphError(404, "ErrorItemNotFound", f"The series has no occurrence on {occurrence_date}.")

    @staticmethod
    def _person_fields(**fields: Any) -> dict:
        """Pythonic keyword arguments → a Graph-shaped event body."""
        tz_name = fields.pop("time_zone", "UTC")
        data: dict[str, Any] = {}
        for name in ("start", "end"):
            if name in fields:
                value = fields.pop(name)
                if not isinstance(value, datetime):
                    value = datetime.combine(value, time())
                if value.tzinfo is not None:
                    value = value.astimezone(zone(tz_name)).replace(tzinfo=None)
                data[name] = {"dateTime": value.isoformat(), "timeZone": tz_name}
        renames = {"subject": "subject", "recurrence": "recurrence", "show_as": "showAs", "sensitivity": "sensitivity"}
        for name, graph_name in renames.items():
            if name in fields:
                data[graph_name] = fields.pop(name)
        if "body" in fields:
            data["body"] = {"contentType": "text", "content": fields.pop("body")}
        if "location" in fields:
            data["location"] = {"displayName": fields.pop("location")}
        if "private" in fields:
            data["sensitivity"] = "private" if fields.pop("private") else "normal"
        if "all_day" in fields:
            data["isAllDay"] = fields.pop("all_day")
        if "attendees" in fields:
            data["attendees"] = [{"emailAddress": {"address": a}, "type": "required"} for a in fields.pop("attendees")]
        if fields:
            raise TypeError(f"Unknown event fields: {', '.join(fields)}")
        return data

    # --- readers (Graph JSON as a client sending our Prefer header would see it, tags included) ---
    READER_PREFS = {"idtype": "ImmutableId", "outlook.timezone": "UTC", "outlook.body-content-type": "text"}

    def event(self, user_id: str, event_id: str) -> dict | None:
        try:
            master, original_start = self._resolve(user_id, self._internal_id(event_id))
        except GraphError:
            return None
        view = self._view(master) if original_start is None else self._occurrence_view(master, original_start)
        return self._reader_render(view)

    def events(self, user_id: str) -> list[dict]:
        """Singles and series masters of the mailbox."""
        return [self._reader_render(self._view(e)) for e in self.state["events"].values() if e["owner"] == user_id]

    def occurrences(self, user_id: str, start: datetime, end: datetime) -> list[dict]:
        """The calendar view: singles and occurrences/exceptions overlapping [start, end)."""
        return [self._reader_render(view) for view in self._window_views(user_id, start, end)]

    @property
    def sent_mail(self) -> list[dict]:
        return self.state["sent_mail"]

    def _reader_render(self, view: dict) -> dict:
        rendered = self._render(view, self.READER_PREFS)
        rendered["singleValueExtendedProperties"] = [
            {"id": p[0], "value": p[1]} for p in view.get("extended", {}).values()
        ]
        return rendered
