"""Microsoft Graph (Outlook calendars) client: app-only tokens from MSAL, one HTTP path via ProviderSession.

Every call sends `Prefer: IdType="ImmutableId"` (ids survive folder moves), `outlook.timezone="UTC"` and
`outlook.body-content-type="text"`, so every event read is raw Graph JSON with UTC times and text bodies.
Reference: /work/shared/reference/graph-api.md (§ numbers below point into it).
"""

from __future__ import annotations

import json
import logging
import re
import threading
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import quote, urlsplit

import msal
import requests
from django.conf import settings

from syncapp.models import MicrosoftConnection
from syncapp.providers.base import (
    ConnectionCheck,
    ErrorKind,
    ProviderError,
    ProviderSession,
    TrustedSession,
    UnreadableItem,
    json_body,
    parse_retry_after,
    scrub_secrets,
    unreadable,
)

logger = logging.getLogger("syncapp.providers.outlook")

SIDE = "outlook"  # ProviderError.side of every error this client raises

# Our tag on every event we create: a GUID-named single-value extended property (§6). Never change it:
# events written with another GUID or Name would no longer be found by find_event_by_link_uid.
LINK_PROPERTY_ID = "String {5f3c9a2e-8b41-4d7a-9c55-3e1f0a6b2d48} Name RaysyncLinkId"

# Several preferences in one Prefer header, comma-separated (RFC 7240 §2). Graph's docs never show how to
# combine them (§2, "UNCONFIRMED"); the sandbox accepts this form and answers Preference-Applied.
PREFER = 'IdType="ImmutableId", outlook.timezone="UTC", outlook.body-content-type="text"'

# Outlook allows 4 concurrent requests per app and mailbox (§5).
MAILBOX_CONCURRENCY = 4

# Authority hosts that Microsoft's instance discovery knows; any other host (the sandbox) skips it (§8).
MICROSOFT_LOGIN_HOSTS = {"login.microsoftonline.com", "login.microsoftonline.us", "login.chinacloudapi.cn"}

RESYNC_CODES = {"syncStateNotFound", "resyncRequired", "SyncStateNotFound"}
THROTTLE_CODES = {"TooManyRequests", "activityLimitReached", "ApplicationThrottled"}
AUTH_CODES = {"InvalidAuthenticationToken", "unauthenticated"}
NOT_FOUND_CODES = {"ErrorItemNotFound", "itemNotFound", "ResourceNotFound"}

MAILBOX_IN_URL = re.compile(r"/users/([^/?]+)")


@dataclass
class DeltaResult:
    """One calendarView/delta round, deduplicated (Graph replays changes, §3)."""

    events: list[dict] = field(default_factory=list)
    removed_ids: list[str] = field(default_factory=list)
    delta_link: str = ""
    full: bool = False
    unreadable: list[UnreadableItem] = field(default_factory=list)  # items without an id, nulls


# --- tokens ---------------------------------------------------------------------------------------

# One MSAL app per (authority, client id) and process, so its in-memory token cache is reused (§8).
_token_apps: dict[tuple[str, str], msal.ConfidentialClientApplication] = {}
_token_apps_lock = threading.Lock()


def reset_token_apps() -> None:
    """Forget every MSAL app (and with it cached tokens and MSAL's HTTP cache): for tests."""
    with _token_apps_lock:
        _token_apps.clear()


def _token_app(authority: str) -> msal.ConfidentialClientApplication:
    key = (authority, settings.MICROSOFT_CLIENT_ID)
    with _token_apps_lock:
        app = _token_apps.get(key)
    if app is None:
        # The constructor already fetches the OIDC configuration (§8), so a bad tenant fails here.
        app = msal.ConfidentialClientApplication(
            settings.MICROSOFT_CLIENT_ID,
            client_credential=settings.MICROSOFT_CLIENT_SECRET,
            authority=authority,
            instance_discovery=urlsplit(authority).hostname in MICROSOFT_LOGIN_HOSTS,
            http_client=msal_http_client(),
        )
        with _token_apps_lock:
            app = _token_apps.setdefault(key, app)
    return app


def msal_http_client() -> requests.Session:
    """MSAL's HTTP session (`http_client`: a requests.Session is accepted), trusting the demo's CA like ours."""
    session = TrustedSession()
    session.mount("https://", requests.adapters.HTTPAdapter(max_retries=1))  # as MSAL's own default session
    return session


def graph_scope(graph_base_url: str) -> str:
    parts = urlsplit(graph_base_url)
    return f"{parts.scheme}://{parts.netloc}/.default"


def drop_cached_tokens(connection: MicrosoftConnection) -> None:
    """Forget the access tokens MSAL holds for the connection's tenant, so the next call fetches a new one."""
    with _token_apps_lock:
        app = _token_apps.get((connection.authority_url, settings.MICROSOFT_CLIENT_ID))
    if app is None:
        return
    cache = app.token_cache
    for token in list(cache.search(cache.CredentialType.ACCESS_TOKEN)):
        cache.remove_at(token)


def acquire_token(connection: MicrosoftConnection) -> str:
    """An app-only access token for the connection's tenant; ProviderError AUTH in plain words on refusal."""
    tenant = connection.tenant_id
    try:
        app = _token_app(connection.authority_url)
        result = app.acquire_token_for_client(scopes=[graph_scope(connection.graph_base_url)])
    except (ValueError, KeyError) as error:
        raise sign_in_setup_error(error, connection) from None
    except requests.RequestException:
        raise ProviderError(
            "Microsoft's sign-in service could not be reached.", kind=ErrorKind.TRANSIENT, side=SIDE
        ) from None
    if "access_token" in result:
        return result["access_token"]
    raise token_error(result, tenant)


def sign_in_setup_error(error: ValueError | KeyError, connection: MicrosoftConnection) -> ProviderError:
    """What MSAL's ValueError (raised while it reads the authority, §8) actually says is wrong.

    MSAL wraps a failed discovery in a second ValueError; the first one (`__context__`) holds Microsoft's
    answer, where AADSTS90002 / 900023 tell an unknown or malformed tenant from any other refusal.
    """
    authority = connection.authority_url
    text = f"{error} {error.__context__ or ''}"
    if isinstance(error, KeyError) or isinstance(error.__context__, json.JSONDecodeError):
        message = (
            f"The sign-in authority {authority} did not answer with a valid OpenID configuration: "
            "check the authority address configured for this cloud."
        )
    elif "should consist of an https url" in text:
        address = re.search(r"address \((.*?)\) should", text)
        message = (
            "The sign-in authority must be an https address with the tenant in its path: "
            f"{address.group(1) if address else authority}. Check the authority configured for this cloud "
            "and the tenant id."
        )
    elif "invalid_instance" in text:
        message = f"Microsoft does not know the sign-in authority {authority}: check the cloud setting."
    elif "AADSTS900023" in text:
        message = malformed_tenant_message(connection.tenant_id)
    elif "AADSTS90002" in text:
        message = unknown_tenant_message(connection.tenant_id)
    elif "Unable to get authority configuration" in text:
        message = (
            f"The sign-in configuration of tenant “{connection.tenant_id}” could not be read at {authority}: "
            "check the tenant id and the cloud setting."
        )
    else:
        message = f"Microsoft's sign-in library refused the configuration: {scrub_secrets(str(error))}"
    return ProviderError(message, kind=ErrorKind.AUTH, code="msal_configuration", side=SIDE)


def unknown_tenant_message(tenant: str) -> str:
    return f"Microsoft does not know the tenant “{tenant}”. Check the tenant id."


def malformed_tenant_message(tenant: str) -> str:
    return (
        f"“{tenant}” is not a valid tenant id: enter the tenant's GUID (Entra admin center → Overview → "
        "Tenant ID) or its domain, such as contoso.onmicrosoft.com."
    )


def token_error(result: dict, tenant: str) -> ProviderError:
    """Turn MSAL's error dict into plain words, deciding by the AADSTS numbers and the OAuth error code."""
    codes = set(result.get("error_codes") or [])
    error = result.get("error", "")
    if codes & {7000215, 7000222, 7000216} or error == "invalid_client":
        message = (
            "Microsoft rejected the portal's app credentials (the client secret is wrong or has expired). "
            "The portal operator must renew the app secret."
        )
    elif codes & {7000112}:
        message = (
            f"The portal's app is disabled in tenant “{tenant}”. A Microsoft 365 administrator must enable it "
            "again (Entra admin center → Enterprise applications → the portal's app → Properties)."
        )
    elif codes & {53003}:
        message = (
            f"A Conditional Access policy in tenant “{tenant}” blocks the portal's app. A Microsoft 365 "
            "administrator must exclude the app from that policy."
        )
    elif codes & {65001, 700016, 7000229} or error == "unauthorized_client":
        message = (
            f"The portal's app has no admin consent in tenant “{tenant}” (it was never granted or was revoked). "
            "A Microsoft 365 administrator must grant consent again from the portal."
        )
    elif codes & {900023}:
        message = malformed_tenant_message(tenant)
    elif codes & {90002} or error == "invalid_tenant":
        message = unknown_tenant_message(tenant)
    elif codes & {500011, 1002012, 70011} or error == "invalid_scope":
        message = (
            f"Tenant “{tenant}” does not offer Microsoft Graph at the address the portal asked for: "
            "check the connection's cloud (global, US Government, 21Vianet)."
        )
    elif error in {"temporarily_unavailable", "server_error"}:
        return ProviderError(
            "Microsoft's sign-in service is temporarily unavailable.", kind=ErrorKind.TRANSIENT, code=error, side=SIDE
        )
    else:
        message = f"Microsoft refused to issue a token for tenant “{tenant}” ({error or 'unknown error'})."
    return ProviderError(message, kind=ErrorKind.AUTH, code=error, side=SIDE)


class GraphAuth(requests.auth.AuthBase):
    """Adds a bearer token to each request; MSAL answers from its cache until the token nears expiry."""

    def __init__(self, connection: MicrosoftConnection) -> None:
        self.connection = connection
        self.token = ""  # the last one sent, to scrub it from any error text that echoes it

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        self.token = acquire_token(self.connection)
        request.headers["Authorization"] = f"Bearer {self.token}"
        return request

    def renew(self) -> None:
        """Graph refused the token (expired early, or revoked): the next request gets a new one from MSAL."""
        logger.info("Graph refused the token of tenant %s: fetching a new one", self.connection.tenant_id)
        drop_cached_tokens(self.connection)


# --- errors ---------------------------------------------------------------------------------------


def error_code(response: requests.Response) -> tuple[str, str]:
    try:
        error = response.json().get("error") or {}
    except (ValueError, AttributeError):
        return "", ""
    return (error.get("code") or "", error.get("message") or "") if isinstance(error, dict) else ("", "")


def mailbox_of(url: str) -> str:
    match = MAILBOX_IN_URL.search(urlsplit(url).path)
    return match.group(1) if match else ""


def classify(response: requests.Response) -> ProviderError:
    """Decide by HTTP status and `error.code`, never by `message` (§5)."""
    status = response.status_code
    code, _ = error_code(response)
    retry_after = parse_retry_after(response.headers.get("Retry-After"))

    def error(message: str, kind: ErrorKind) -> ProviderError:
        return ProviderError(message, kind=kind, status=status, code=code, retry_after=retry_after, side=SIDE)

    if status == 429 or code in THROTTLE_CODES:
        return error("Microsoft Graph is throttling requests for this mailbox.", ErrorKind.RATE_LIMITED)
    if status == 410 or code in RESYNC_CODES:
        return error("The Outlook sync state expired; a full read is needed.", ErrorKind.RESYNC)
    if status == 401 or code in AUTH_CODES:
        # Reached only when a freshly fetched token is refused too (the session renews it once on a 401).
        return error(
            "Microsoft Graph did not accept the portal's access token, not even a newly issued one: "
            "check that the app's consent in the tenant still stands.",
            ErrorKind.AUTH,
        )
    if code == "ErrorAccessDenied":
        return error(access_denied_message(mailbox_of(response.url or "")), ErrorKind.PERMISSION)
    if status == 403:
        return error(
            f"Microsoft Graph refused the request ({code or 'forbidden'}): the portal's app lacks a permission "
            "in your tenant. A Microsoft 365 administrator must grant admin consent again.",
            ErrorKind.PERMISSION,
        )
    if status == 404 or code in NOT_FOUND_CODES:
        return error("The Outlook item no longer exists.", ErrorKind.NOT_FOUND)
    if status >= 500:
        return error(f"Microsoft Graph had a temporary problem (HTTP {status}).", ErrorKind.TRANSIENT)
    return error(f"Microsoft Graph rejected the request ({code or f'HTTP {status}'}).", ErrorKind.VALIDATION)


def access_denied_message(mailbox: str) -> str:
    # "Access to OData is disabled." means an application access policy (or RBAC for Applications)
    # leaves this mailbox out of the app's scope (§7).
    who = f"mailbox {mailbox}" if mailbox else "this mailbox"
    return (
        f"Microsoft refused the portal access to {who}: it is outside the application access policy "
        "(or RBAC for Applications scope) your Exchange administrator set for the portal's app. "
        "Add the mailbox to the policy's group; changes can take over an hour to reach Microsoft Graph."
    )


def concurrency_key_for(tenant_id: str):
    def key(url: str) -> tuple[str, str]:
        return ("graph", mailbox_of(url) or tenant_id)

    return key


# --- request bodies -------------------------------------------------------------------------------


def utc_iso(moment: datetime) -> str:
    """`2026-03-01T09:00:00Z`; naive datetimes are taken as UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def graph_datetime(moment: datetime) -> dict:
    """A dateTimeTimeZone in UTC, the only form we write."""
    return {"dateTime": utc_iso(moment)[:-1], "timeZone": "UTC"}


def text_body(text: str) -> dict:
    return {"contentType": "text", "content": text}


def graph_attendee(address: str, name: str = "", kind: str = "required") -> dict:
    return {"emailAddress": {"address": address, "name": name or address}, "type": kind}


def link_uid_of(event: dict) -> str:
    """Our link uid, when the event was read with the extended property expanded (get_event, find)."""
    for prop in event.get("singleValueExtendedProperties") or []:
        if prop.get("id", "").lower() == LINK_PROPERTY_ID.lower():
            return prop.get("value", "")
    return ""


def odata_quote(value: str) -> str:
    return value.replace("'", "''")


# --- the client -----------------------------------------------------------------------------------


class OutlookClient:
    """Calendar operations on the mailboxes of one Microsoft tenant, with app-only access."""

    def __init__(self, connection: MicrosoftConnection, *, session: ProviderSession | None = None) -> None:
        self.connection = connection
        self.session = session or ProviderSession(
            base_url=connection.graph_base_url,
            classify=classify,
            concurrency_key=concurrency_key_for(connection.tenant_id),
            concurrency_limit=MAILBOX_CONCURRENCY,
        )
        self.auth = GraphAuth(connection)
        self.session.side = SIDE
        self.session.http.auth = self.auth
        self.session.renew_auth = self.auth.renew
        self.session.secrets = lambda: (settings.MICROSOFT_CLIENT_SECRET, self.auth.token)
        self.session.http.headers["Prefer"] = PREFER

    # --- plumbing
    def _json(self, method: str, path: str, **kwargs) -> dict:
        response = self.session.request(method, path, **kwargs)
        if not response.content:
            return {}
        body = json_body(response, service="Microsoft Graph", side=SIDE)
        if not isinstance(body, dict):
            raise ProviderError(
                f"Microsoft Graph answered HTTP {response.status_code} with JSON that is not an object.",
                kind=ErrorKind.TRANSIENT,
                status=response.status_code,
                side=SIDE,
                maybe_applied=True,
            )
        return body

    def _pages(self, path: str, **kwargs) -> list[dict]:
        """Every item of a collection, following @odata.nextLink (§7)."""
        items: list[dict] = []
        next_path: str | None = path
        while next_path:
            page = self._json("GET", next_path, **kwargs)
            items.extend(page.get("value", []))
            next_path = page.get("@odata.nextLink")
            kwargs.pop("params", None)  # the nextLink carries every query option
        return items

    @staticmethod
    def _event_path(user_id: str, event_id: str = "") -> str:
        path = f"users/{quote(user_id, safe='')}/events"
        return f"{path}/{quote(event_id, safe='')}" if event_id else path

    # --- users
    def list_users(self) -> list[dict]:
        return self._pages("users", params={"$select": "id,mail,userPrincipalName,displayName", "$top": "999"})

    # --- reading events
    def delta(
        self, user_id: str, *, delta_link: str = "", start: datetime, end: datetime, page_size: int = 100
    ) -> DeltaResult:
        """One round of calendarView/delta; an expired delta link silently becomes a full read (§3)."""
        if delta_link:
            try:
                return self._read_delta(delta_link, page_size, full=False)
            except ProviderError as error:
                if error.kind != ErrorKind.RESYNC:
                    raise
                logger.info("Delta link of mailbox %s expired (%s): full read", user_id, error.code or error.status)
        first = f"users/{quote(user_id, safe='')}/calendarView/delta"
        params = {"startDateTime": utc_iso(start), "endDateTime": utc_iso(end)}
        try:
            return self._read_delta(first, page_size, full=True, params=params)
        except ProviderError as error:
            if error.kind != ErrorKind.RESYNC:
                raise
            # A skip token evicted while we paged: start once more, from the first page.
            return self._read_delta(first, page_size, full=True, params=params)

    def _read_delta(self, path: str, page_size: int, *, full: bool, params: dict | None = None) -> DeltaResult:
        headers = {"Prefer": f"{PREFER}, odata.maxpagesize={page_size}"}
        latest: dict[str, dict] = {}  # by id, in order of last appearance: the last occurrence wins
        next_path: str | None = path
        delta_link = ""
        bad: list[UnreadableItem] = []
        while next_path:
            page = self._json("GET", next_path, params=params, headers=headers)
            params = None
            for item in page.get("value") or []:
                if not isinstance(item, dict) or not isinstance(item.get("id"), str) or not item["id"]:
                    bad.append(unreadable(SIDE, item, "the item has no id", title_key="subject"))
                    continue
                latest.pop(item["id"], None)
                latest[item["id"]] = item
            next_path = page.get("@odata.nextLink")
            delta_link = page.get("@odata.deltaLink", delta_link)
        return DeltaResult(
            events=[item for item in latest.values() if "@removed" not in item],
            removed_ids=[item["id"] for item in latest.values() if "@removed" in item],
            delta_link=delta_link,
            full=full,
            unreadable=bad,
        )

    def get_event(self, user_id: str, event_id: str) -> dict | None:
        """The event with our link property expanded (link_uid_of); None when it is gone."""
        try:
            return self._json("GET", self._event_path(user_id, event_id), params=self._expand_link_property())
        except ProviderError as error:
            if error.kind == ErrorKind.NOT_FOUND:
                return None
            raise

    def list_instances(self, user_id: str, series_master_id: str, start: datetime, end: datetime) -> list[dict]:
        path = f"{self._event_path(user_id, series_master_id)}/instances"
        return self._pages(path, params={"startDateTime": utc_iso(start), "endDateTime": utc_iso(end)})

    def find_event_by_link_uid(self, user_id: str, link_uid: str) -> dict | None:
        """The event we created for `link_uid`, if any: how a retried create finds what it already made (§6)."""
        condition = (
            f"singleValueExtendedProperties/Any(ep: ep/id eq '{odata_quote(LINK_PROPERTY_ID)}' "
            f"and ep/value eq '{odata_quote(link_uid)}')"
        )
        params = {"$filter": condition, **self._expand_link_property()}
        found = self._json("GET", self._event_path(user_id), params=params).get("value", [])
        return found[0] if found else None

    @staticmethod
    def _expand_link_property() -> dict:
        return {"$expand": f"singleValueExtendedProperties($filter=id eq '{odata_quote(LINK_PROPERTY_ID)}')"}

    # --- writing events
    def create_event(self, user_id: str, event: dict, *, link_uid: str, transaction_id: str | None = None) -> dict:
        """Create, tagged with `link_uid`. The transactionId makes retries of this POST idempotent (§2): the
        session's own, and, when the caller passes a stable one (the engine passes the link's uid), a later
        run's too. What Graph answers to a repeated one is UNCONFIRMED, so a later run looks for the tag
        first (find_event_by_link_uid) and never relies on it alone."""
        body = {
            **event,
            "transactionId": transaction_id or str(uuid.uuid4()),
            "singleValueExtendedProperties": [{"id": LINK_PROPERTY_ID, "value": link_uid}],
        }
        return self._json("POST", self._event_path(user_id), json=body)

    def update_event(self, user_id: str, event_id: str, patch: dict) -> dict:
        """PATCH an event, a series master or one occurrence (which then becomes an exception)."""
        return self._json("PATCH", self._event_path(user_id, event_id), json=patch)

    def delete_event(self, user_id: str, event_id: str) -> None:
        try:
            self.session.request("DELETE", self._event_path(user_id, event_id))
        except ProviderError as error:
            if error.kind != ErrorKind.NOT_FOUND:
                raise

    def cancel_event(self, user_id: str, event_id: str, comment: str = "") -> None:
        """Cancel a meeting the mailbox organizes; attendees get a cancellation (§2)."""
        self.session.request("POST", f"{self._event_path(user_id, event_id)}/cancel", json={"comment": comment})

    # --- change notifications (§4)
    def create_subscription(
        self, user_id: str, *, notification_url: str, lifecycle_url: str, client_state: str, expires_at: datetime
    ) -> dict:
        body = {
            "changeType": "created,updated,deleted",
            "notificationUrl": notification_url,
            "lifecycleNotificationUrl": lifecycle_url,
            "resource": f"/users/{user_id}/events",
            "expirationDateTime": utc_iso(expires_at),
            "clientState": client_state,
        }
        return self._json("POST", "subscriptions", json=body)

    def renew_subscription(self, subscription_id: str, expires_at: datetime) -> dict:
        path = f"subscriptions/{quote(subscription_id, safe='')}"
        return self._json("PATCH", path, json={"expirationDateTime": utc_iso(expires_at)})

    def delete_subscription(self, subscription_id: str) -> None:
        try:
            self.session.request("DELETE", f"subscriptions/{quote(subscription_id, safe='')}")
        except ProviderError as error:
            if error.kind != ErrorKind.NOT_FOUND:
                raise

    # --- connect form
    def test_connection(self, sample_user_id: str | None = None) -> ConnectionCheck:
        """Token, user list and one mailbox calendar, each failure in plain words."""
        try:
            acquire_token(self.connection)
            users = self._json("GET", "users", params={"$select": "id,userPrincipalName", "$top": "1"})["value"]
            user_id = sample_user_id or (users[0]["id"] if users else None)
            if user_id is None:
                return ConnectionCheck(True, "Connected to Microsoft 365, but the tenant has no users yet.")
            self._json("GET", f"users/{quote(user_id, safe='')}/calendar")
        except ProviderError as error:
            error.scrub(self.session.secrets())  # acquire_token's errors do not pass through the session
            return ConnectionCheck(False, error.message, permanent=error.permanent, error=error)
        return ConnectionCheck(True, "Connected to Microsoft 365: users and calendars are readable.")
