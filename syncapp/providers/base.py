"""The one HTTP path to external systems: timeouts, bounded retries, Retry-After, classified errors.

Each provider module (raynet.py, outlook.py) builds a ProviderSession with its own
`classify` function that turns an error response into a ProviderError, as
healthchecks' transports raise TransportError(message, permanent=...).
"""

from __future__ import annotations

import logging
import random
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum

import requests
from django.db import connection

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
NEEDS_ADMIN_KINDS = {ErrorKind.AUTH, ErrorKind.PERMISSION}


class ProviderError(Exception):
    """An external call failed. `message` is plain words fit for an admin; never contains secrets."""

    def __init__(
        self,
        message: str,
        *,
        kind: ErrorKind,
        status: int | None = None,
        code: str = "",
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.kind = kind
        self.status = status
        self.code = code
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:
        return self.kind in RETRYABLE_KINDS

    @property
    def permanent(self) -> bool:
        """Retrying later cannot help until somebody changes something."""
        return self.kind in NEEDS_ADMIN_KINDS

    def __repr__(self) -> str:
        return f"ProviderError({self.kind.value}, {self.status}, {self.message!r})"


@dataclass(frozen=True)
class ConnectionCheck:
    """The result of a connection test, in plain words for the portal's connect form."""

    ok: bool
    message: str
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
def concurrency_slot(namespace: str, key: str, limit: int, *, poll: float = 0.05) -> Iterator[int]:
    """Hold one of `limit` slots for `key`, across every thread and process sharing the database.

    PostgreSQL session advisory locks: slot n of key k is lock (hash(namespace:k), n).
    A crashed process drops its connection and with it its slots.
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
            time.sleep(poll * (1 + random.random()))


class ProviderSession:
    """One requests.Session per connection, with the retry policy both providers share."""

    # A class attribute, so tests can replace it for every session at once (tests/raynet_fixtures.py).
    sleep: Callable[[float], None] = time.sleep

    def __init__(
        self,
        *,
        base_url: str,
        classify: Callable[[requests.Response], ProviderError],
        concurrency_key: Callable[[str], tuple[str, str]] | None = None,
        concurrency_limit: int = 4,
        timeout: tuple[float, float] = (5, 60),
        max_attempts: int = 4,
        max_wait: float = 120.0,
        on_response: Callable[[requests.Response], None] | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/") + "/"
        self.http = requests.Session()
        self.classify = classify
        self.concurrency_key = concurrency_key
        self.concurrency_limit = concurrency_limit
        self.timeout = timeout
        self.max_attempts = max_attempts
        self.max_wait = max_wait
        self.on_response = on_response

    def url(self, path: str) -> str:
        return path if path.startswith("https://") or path.startswith("http://") else self.base_url + path.lstrip("/")

    def request(self, method: str, path: str, **kwargs) -> requests.Response:
        """Send, retrying throttling and transient failures a bounded number of times."""
        url = self.url(path)
        for attempt in range(1, self.max_attempts + 1):
            try:
                return self._send_once(method, url, **kwargs)
            except ProviderError as error:
                if not error.retryable or attempt == self.max_attempts:
                    raise
                wait = error.retry_after if error.retry_after is not None else min(2 ** (attempt - 1), 30)
                if wait > self.max_wait:
                    raise
                logger.info("%s %s: %s; retry %d in %.1fs", method, url.split("?")[0], error.kind.value, attempt, wait)
                self.sleep(wait)
        raise AssertionError("unreachable")

    def _send_once(self, method: str, url: str, **kwargs) -> requests.Response:
        kwargs.setdefault("timeout", self.timeout)
        if self.concurrency_key is None:
            response = self._http(method, url, **kwargs)
        else:
            namespace, key = self.concurrency_key(url)
            with concurrency_slot(namespace, key, self.concurrency_limit):
                response = self._http(method, url, **kwargs)
        if self.on_response is not None:
            self.on_response(response)
        if response.status_code >= 400:
            raise self.classify(response)
        return response

    def _http(self, method: str, url: str, **kwargs) -> requests.Response:
        try:
            return self.http.request(method, url, **kwargs)
        except requests.Timeout:
            raise ProviderError("The service did not answer in time.", kind=ErrorKind.TRANSIENT) from None
        except requests.ConnectionError:
            raise ProviderError("The service could not be reached.", kind=ErrorKind.TRANSIENT) from None
