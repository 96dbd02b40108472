"""The one HTTP path to external systems: timeouts, bounded retries, Retry-After, classified errors.

Each provider module (raynet.py, outlook.py) builds a ProviderSession with its own
`classify` function that turns an error response into a ProviderError, as
healthchecks' transports raise TransportError(message, permanent=...).
Every ProviderError leaving a session says which side failed and carries no secret (scrub_secrets).
"""

from __future__ import annotations

import base64
import logging
import os
import random
import re
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass
from enum import StrEnum

import requests
from django.db import connection
from urllib3.exceptions import ConnectTimeoutError, MaxRetryError

logger = logging.getLogger("syncapp.providers")


class ErrorKind(StrEnum):
    AUTH = "auth"  # bad credentials, revoked consent, blocked: the admin must act
    PERMISSION = "permission"  # the account may not do this (or the mailbox is out of scope): the admin must act
    NOT_FOUND = "not_found"
    VALIDATION = "validation"  # the request itself is wrong: retrying the same request cannot help
    RATE_LIMITED = "rate_limited"  # throttled for a short while: retry after a pause
    BUDGET_SPENT = "budget_spent"  # the daily request budget is used up: pause until it resets
    TRANSIENT = "transient"  # 5xx, timeouts, connection errors: retry
    RESYNC = "resync"  # the sync cursor expired: start over with a full read


RETRYABLE_KINDS = {ErrorKind.RATE_LIMITED, ErrorKind.TRANSIENT}
SERVICE_NAMES = {"raynet": "Raynet", "outlook": "Microsoft Graph"}  # by ProviderError.side
NEEDS_ADMIN_KINDS = {ErrorKind.AUTH, ErrorKind.PERMISSION}


class ProviderError(Exception):
    """An external call failed. `message` is plain words fit for an admin; never contains secrets.

    `side` is "raynet" or "outlook": the connection that failed. `maybe_applied` is True when the
    request may have been carried out although no success came back (a 5xx, a timeout or a broken
    connection after sending): a non-idempotent request is then never resent.
    """

    def __init__(
        self,
        message: str,
        *,
        kind: ErrorKind,
        status: int | None = None,
        code: str = "",
        retry_after: float | None = None,
        side: str = "",
        maybe_applied: bool = False,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.kind = kind
        self.status = status
        self.code = code
        self.retry_after = retry_after
        self.side = side
        self.maybe_applied = maybe_applied

    def scrub(self, secrets: Iterable[str]) -> None:
        secrets = tuple(secrets)
        self.message = scrub_secrets(self.message, secrets=secrets, limit=MAX_MESSAGE)
        self.code = scrub_secrets(self.code, secrets=secrets, limit=100)
        self.args = (self.message,)

    @property
    def retryable(self) -> bool:
        return self.kind in RETRYABLE_KINDS

    @property
    def permanent(self) -> bool:
        """Retrying later cannot help until somebody changes something."""
        return self.kind in NEEDS_ADMIN_KINDS

    def __repr__(self) -> str:
        return f"ProviderError({self.side or '?'}, {self.kind.value}, {self.status}, {self.message!r})"


MAX_ERROR_TEXT = 300
MAX_MESSAGE = 600  # our plain words plus up to ~300 characters of the upstream's own
# Credentials in the shapes an upstream may echo them: header values, form/query parameters, JSON keys.
CREDENTIAL_PATTERNS = [
    re.compile(r"\b(Bearer|Basic)\s+[A-Za-z0-9._~+/=-]+", re.IGNORECASE),
    re.compile(r"(Authorization[\"']?\s*[:=]\s*[\"']?)[^\"'\r\n,}]+", re.IGNORECASE),
    re.compile(
        r"((?:client_secret|client_assertion|client_?state|access_token|refresh_token|secret_?token|api_?key"
        r"|password|secret)"
        r"[\"']?\s*[:=]\s*[\"']?)[^\"'&\s,}]+",
        re.IGNORECASE,
    ),
]
REDACTED = "[redacted]"


def scrub_secrets(text: str, *, secrets: Iterable[str] = (), limit: int = MAX_ERROR_TEXT) -> str:
    """`text` without the given secrets (clear or base64, as in a Basic header), tokens or credential values; trimmed.

    For every error text an upstream sends us: what we store in runs, log entries and on the connection
    is shown in the portal and the admin, and an upstream may echo the request's credentials.
    """
    for secret in sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True):
        encoded = base64.b64encode(secret.encode()).decode()
        for form in (secret, encoded, encoded.rstrip("=")):
            text = text.replace(form, REDACTED)
    text = CREDENTIAL_PATTERNS[0].sub(lambda m: f"{m.group(1)} {REDACTED}", text)
    for pattern in CREDENTIAL_PATTERNS[1:]:
        text = pattern.sub(lambda m: m.group(1) + REDACTED, text)
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def basic_auth_value(username: str, password: str) -> str:
    """What a Basic Authorization header carries for these credentials, to scrub it too."""
    return base64.b64encode(f"{username}:{password}".encode()).decode()


@dataclass(frozen=True)
class UnreadableItem:
    """One row of a listing that could not be parsed (a malformed date, a missing id, a null).

    Listings yield it in place of the row rather than failing as a whole, so one bad item never
    blocks the rest of a mailbox; the engine logs it with its id and title and goes on.
    """

    side: str  # "raynet" or "outlook"
    item_id: str
    title: str
    problem: str


def unreadable(side: str, row: object, problem: Exception | str, *, title_key: str = "title") -> UnreadableItem:
    fields = row if isinstance(row, dict) else {}
    problem = problem if isinstance(problem, str) else f"{type(problem).__name__}: {problem}"
    return UnreadableItem(
        side=side,
        item_id=str(fields.get("id") or "(no id)")[:200],
        title=str(fields.get(title_key) or "")[:200],
        problem=scrub_secrets(problem, limit=200),
    )


@dataclass(frozen=True)
class ConnectionCheck:
    """The result of a connection test, in plain words for the portal's connect form."""

    ok: bool
    message: str
    permanent: bool = False  # a failure only the admin can fix (the connection stops until then)
    # The failure behind a failed check, so the portal can word it in the reader's language.
    error: ProviderError | None = None


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait; Graph sends fractions such as `2.128`."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


@contextmanager
def concurrency_slot(
    namespace: str, key: str, limit: int, *, poll: float = 0.05, deadline: float | None = None
) -> Iterator[int]:
    """Hold one of `limit` slots for `key`, across every thread and process sharing the database.

    PostgreSQL session advisory locks: slot n of key k is lock (hash(namespace:k), n).
    A crashed process drops its connection and with it its slots. Waiting for a slot ends at
    `deadline` (time.monotonic()) with a RATE_LIMITED error: nothing was sent.
    """
    lock_key = zlib.crc32(f"{namespace}:{key}".encode()) - 2**31
    with connection.cursor() as cursor:
        while True:
            for slot in range(limit):
                cursor.execute("SELECT pg_try_advisory_lock(%s, %s)", [lock_key, slot])
                if cursor.fetchone()[0]:
                    try:
                        yield slot
                    finally:
                        cursor.execute("SELECT pg_advisory_unlock(%s, %s)", [lock_key, slot])
                    return
            if deadline is not None and time.monotonic() >= deadline:
                raise ProviderError(
                    f"All {limit} connections allowed at once are busy and the run's time is up.",
                    kind=ErrorKind.RATE_LIMITED,
                    retry_after=1.0,
                )
            time.sleep(poll * (1 + random.random()))


class TrustedSession(requests.Session):
    """A requests.Session that verifies servers with the demo's CA bundle while the sandbox is on.

    The bundle goes with every request: requests lets REQUESTS_CA_BUNDLE in the environment override a
    session's own `verify` (psf/requests#3829), which would undo it on machines that set that variable.
    """

    def __init__(self) -> None:
        from django.conf import settings

        super().__init__()
        self.verify = settings.SANDBOX_CA_BUNDLE or True

    def request(self, method, url, *args, **kwargs):
        kwargs.setdefault("verify", self.verify)
        return super().request(method, url, *args, **kwargs)


class ProviderSession:
    """One requests.Session per connection, with the retry policy both providers share.

    `deadline` (a time.monotonic() instant, set by the engine per run): a retry wait that would pass it
    is not slept; the error is raised with its `retry_after` instead, so the caller can come back later.
    """

    # A class attribute, so tests can replace it for every session at once (tests/raynet_fixtures.py).
    sleep: Callable[[float], None] = time.sleep

    def __init__(
        self,
        *,
        base_url: str,
        classify: Callable[[requests.Response], ProviderError],
        side: str = "",
        secrets: Callable[[], Iterable[str]] = tuple,
        concurrency_key: Callable[[str], tuple[str, str]] | None = None,
        concurrency_limit: int = 4,
        timeout: tuple[float, float] = (5, 60),
        max_attempts: int = 4,
        max_wait: float = 120.0,
        on_response: Callable[[requests.Response], None] | None = None,
        renew_auth: Callable[[], None] | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/") + "/"
        self.http = TrustedSession()
        # What requests takes from the environment (proxies, a CA bundle), read once for the session's host
        # rather than on every request: it scans os.environ each time, a good part of an idle poll's CPU.
        self.http.proxies = requests.utils.get_environ_proxies(self.base_url)
        if self.http.verify is True:
            self.http.verify = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
        self.http.trust_env = False
        self.classify = classify
        self.side = side
        self.secrets = secrets
        self.concurrency_key = concurrency_key
        self.concurrency_limit = concurrency_limit
        self.timeout = timeout
        self.max_attempts = max_attempts
        self.max_wait = max_wait
        self.on_response = on_response
        self.renew_auth = renew_auth
        self.deadline: float | None = None
        # Per thread, as the advisory locks (each thread has its own database connection).
        self._burst = threading.local()

    @contextmanager
    def burst(self) -> Iterator[None]:
        """The requests inside share their concurrency slot: taken at the first request, given back at the end.

        Two advisory-lock statements per run (or per listing) instead of two per request. The slot is held
        while the burst does other work too (a Graph call in a sync run): fewer requests than the limit can
        then run at once, never more.
        """
        if getattr(self._burst, "slots", None) is not None:  # nested: the outer burst holds the slots
            yield
            return
        with ExitStack() as slots:
            self._burst.slots, self._burst.held = slots, set()
            try:
                yield
            finally:
                self._burst.slots = self._burst.held = None

    def _slot(self, url: str):
        namespace, key = self.concurrency_key(url)
        slots = getattr(self._burst, "slots", None)
        if slots is None:
            return concurrency_slot(namespace, key, self.concurrency_limit, deadline=self.deadline)
        if (namespace, key) not in self._burst.held:
            slots.enter_context(concurrency_slot(namespace, key, self.concurrency_limit, deadline=self.deadline))
            self._burst.held.add((namespace, key))
        return nullcontext()

    def url(self, path: str) -> str:
        return path if path.startswith("https://") or path.startswith("http://") else self.base_url + path.lstrip("/")

    def request(self, method: str, path: str, *, idempotent: bool = True, **kwargs) -> requests.Response:
        """Send, retrying throttling and transient failures a bounded number of times.

        A request that is not idempotent (a create, a participant add) is resent only after an error
        that proves the server did not process it (connection refused, 429); otherwise the error is
        raised with `maybe_applied`, for the caller to find out what happened.
        A 401 lets `renew_auth` replace the credentials once, then the request is sent again.
        """
        try:
            return self._send(method, self.url(path), idempotent=idempotent, **kwargs)
        except ProviderError as error:
            error.side = error.side or self.side
            error.scrub(self.secrets())
            raise

    def _send(self, method: str, url: str, *, idempotent: bool, **kwargs) -> requests.Response:
        renewed = False
        attempt = 1
        while True:
            try:
                return self._send_once(method, url, **kwargs)
            except ProviderError as error:
                if error.status == 401 and self.renew_auth is not None and not renewed:
                    # An expired or revoked token is refused before anything is processed: renew, send again.
                    self.renew_auth()
                    renewed = True
                    continue
                if not error.retryable or attempt == self.max_attempts or (error.maybe_applied and not idempotent):
                    raise
                wait = error.retry_after if error.retry_after is not None else min(2 ** (attempt - 1), 30)
                error.retry_after = wait
                if wait > self.max_wait or self.past_deadline(wait):
                    raise
                logger.info("%s %s: %s; retry %d in %.1fs", method, url.split("?")[0], error.kind.value, attempt, wait)
                self.sleep(wait)
                attempt += 1

    def past_deadline(self, wait: float) -> bool:
        return self.deadline is not None and time.monotonic() + wait > self.deadline

    def _send_once(self, method: str, url: str, **kwargs) -> requests.Response:
        kwargs.setdefault("timeout", self.timeout)
        if self.concurrency_key is None:
            response = self._http(method, url, **kwargs)
        else:
            with self._slot(url):
                response = self._http(method, url, **kwargs)
        if self.on_response is not None:
            self.on_response(response)
        if response.status_code >= 400:
            error = self.classify(response)
            # A server error may come after the work was done (the reply lost on the way); a refusal may not.
            error.maybe_applied = error.kind == ErrorKind.TRANSIENT
            raise error
        return response

    def _http(self, method: str, url: str, **kwargs) -> requests.Response:
        service = SERVICE_NAMES.get(self.side, "The service")
        try:
            return self.http.request(method, url, **kwargs)
        except requests.ConnectTimeout:
            raise ProviderError(f"{service} could not be reached.", kind=ErrorKind.TRANSIENT) from None
        except requests.Timeout:
            raise ProviderError(
                f"{service} did not answer in time.", kind=ErrorKind.TRANSIENT, maybe_applied=True
            ) from None
        except requests.ConnectionError as error:
            sent = sent_before_failing(error)
            words = "broke the connection before answering" if sent else "could not be reached"
            raise ProviderError(f"{service} {words}.", kind=ErrorKind.TRANSIENT, maybe_applied=sent) from None


def sent_before_failing(error: requests.ConnectionError) -> bool:
    """False only when the connection was never made (refused, unknown host), so nothing was sent."""
    reason = error.args[0] if error.args else None
    if isinstance(reason, MaxRetryError):
        reason = reason.reason
    return not isinstance(reason, ConnectTimeoutError)  # urllib3's NewConnectionError is one


def json_body(response: requests.Response, *, service: str, side: str) -> object:
    """The decoded body; a body that is not JSON is a transient error in plain words (the request did run)."""
    try:
        return response.json()
    except ValueError:
        kind = response.headers.get("Content-Type", "no content type").split(";")[0]
        raise ProviderError(
            f"{service} answered with something that is not valid JSON (HTTP {response.status_code}, {kind}).",
            kind=ErrorKind.TRANSIENT,
            status=response.status_code,
            side=side,
            maybe_applied=True,
        ) from None
