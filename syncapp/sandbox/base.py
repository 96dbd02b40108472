"""Plumbing shared by the Raynet and Graph sandboxes: one implementation, two fronts.

A sandbox is a class whose whole state (records, request log, pending faults) is
one JSON-able dict, so the same code serves
- fast tests, registered with `responses` (state in memory), and
- the demo, served over HTTP by Django (`sandbox_view`), with the state kept in a
  PostgreSQL row locked for each request, shared by web and worker processes.
"""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt


@dataclass
class SandboxRequest:
    method: str
    path: str  # below the sandbox's base URL, without a leading slash: "meeting/12/"
    query: dict[str, list[str]]
    headers: dict[str, str]  # keys lower-cased
    body: bytes = b""
    url: str = ""

    def json(self) -> Any:
        return json.loads(self.body or b"null")

    def header(self, name: str, default: str = "") -> str:
        return self.headers.get(name.lower(), default)

    def arg(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[0] if values else default


@dataclass
class SandboxResponse:
    status: int
    body: Any = None  # dict/list → JSON, str → text, None → empty
    headers: dict[str, str] = field(default_factory=dict)
    # Not an answer but a broken connection: "refused", "reset" or "timeout" (see Sandbox.inject_fault).
    disconnect: str = ""
    # The client dies before it reads this reply: a process id to SIGKILL, or True in-process (see kill_client).
    kill: int | bool = False
    hold: tuple[int, float] | None = None  # (hold number, at most seconds): see Sandbox.inject_fault

    def encoded(self) -> tuple[bytes, str]:
        if self.body is None:
            return b"", self.headers.get("Content-Type", "text/plain")
        if isinstance(self.body, str | bytes):
            data = self.body.encode() if isinstance(self.body, str) else self.body
            return data, self.headers.get("Content-Type", "text/plain; charset=utf-8")
        return json.dumps(self.body).encode(), "application/json"


class Sandbox:
    """Base for a stateful fake API. Subclasses implement `dispatch` and the "act as a person" methods."""

    name = "sandbox"

    def __init__(self, state: dict | None = None) -> None:
        self.state: dict = state if state is not None else self.initial_state()
        self.state.setdefault("calls", [])
        self.state.setdefault("faults", [])
        self.lock = threading.RLock()
        # Set by the HTTP front (stored_sandbox): deliveries wait for `take_outgoing` instead of going out at once.
        self.deferring = False

    def initial_state(self) -> dict:
        return {}

    # --- request log, for API-call budgets -------------------------------------------------
    def count(self, method: str | None = None, path: str | None = None) -> int:
        """Requests seen, by method and a regular expression matched against the path."""
        return sum(
            1
            for call_method, call_path in self.state["calls"]
            if (method is None or call_method == method) and (path is None or re.search(path, call_path))
        )

    def reset_calls(self) -> None:
        self.state["calls"].clear()

    # --- fault injection ---------------------------------------------------------------------
    def inject_fault(
        self,
        status: int,
        *,
        times: int = 1,
        body: Any = None,
        headers: dict | None = None,
        delay: float = 0.0,
        path: str | None = None,
        method: str | None = None,
        after: bool = False,
        disconnect: str = "",
        kill: int | bool = False,
        hold: float = 0.0,
    ) -> None:
        """The next `times` matching requests fail with `status` (status 0: only slow, then served).

        `after=True`: the request is carried out first, then its reply is lost and replaced by the fault
        (a 503 or a timeout after processing). `disconnect`: no HTTP answer at all, the connection breaks:
        "refused" (nothing reached the service), "reset" or "timeout" (with `after`, once it was carried
        out). The `responses` front raises what requests raises then; the HTTP front answers 504.
        `kill`: the request is carried out, then the client dies before it reads the reply (a crash right
        after an accepted write). The HTTP front SIGKILLs process `kill` (a pid) once the write is stored;
        the `responses` front raises ClientKilled in the caller, which no `except Exception` stops. Each
        kill is noted in `state["kills"]` as [method, path].
        `hold` (HTTP front): the request is served, then its reply waits (outside the state's lock) until
        `release_hold(n)` or `hold` seconds, so others can act between a read and what its reader does next;
        hold n is noted as `state["holds"][n]` = [method, path] once the reply is ready.
        """
        if disconnect not in ("", "refused", "reset", "timeout"):
            raise ValueError(f"unknown disconnect {disconnect!r}")
        self.state["faults"].append(
            {
                "status": status,
                "times": times,
                "body": body,
                "headers": headers or {},
                "delay": delay,
                "path": path,
                "method": method,
                "after": after or bool(kill),
                "disconnect": disconnect,
                "kill": kill,
                "hold": hold,
            }
        )

    def _take_fault(self, request: SandboxRequest) -> dict | None:
        for fault in self.state["faults"]:
            if fault["method"] and fault["method"] != request.method:
                continue
            if fault["path"] and not re.search(fault["path"], request.path):
                continue
            fault["times"] -= 1
            if fault["times"] <= 0:
                self.state["faults"].remove(fault)
            return fault
        return None

    # --- the single entry point of both fronts -------------------------------------------------
    def handle(self, request: SandboxRequest) -> SandboxResponse:
        with self.lock:
            self.state["calls"].append([request.method, request.path])
            fault = self._take_fault(request)
        if fault and fault["delay"]:
            time.sleep(fault["delay"])
        if fault and fault.get("after"):
            self.serve(request)  # carried out; the reply below replaces the real one
        if fault and fault.get("kill"):
            with self.lock:
                self.state.setdefault("kills", []).append([request.method, request.path])
            return SandboxResponse(504, None, kill=fault["kill"])
        if fault and fault.get("disconnect"):
            return SandboxResponse(504, None, disconnect=fault["disconnect"])
        if fault and fault["status"]:
            return SandboxResponse(fault["status"], fault["body"], dict(fault["headers"]))
        reply = self.serve(request)
        if fault and fault.get("hold"):
            with self.lock:
                holds = self.state.setdefault("holds", [])
                holds.append([request.method, request.path])
            reply.hold = (len(holds) - 1, fault["hold"])
        return reply

    def release_hold(self, number: int) -> None:
        """The reply held as hold `number` may go (see inject_fault's `hold`)."""
        self.state.setdefault("released", []).append(number)

    def serve(self, request: SandboxRequest) -> SandboxResponse:
        """Answer one request; the default holds the lock for the whole request."""
        with self.lock:
            return self.dispatch(request)

    def dispatch(self, request: SandboxRequest) -> SandboxResponse:
        raise NotImplementedError

    # --- what the service sends on its own (notifications, webhooks), HTTP front -----------------------
    def take_outgoing(self) -> list[Outgoing]:
        """The deliveries a change queued, taken out of the state: the HTTP front POSTs them once the state is
        committed, so a product that reacts at once (a sync run calling back) never waits on the state's lock."""
        return []

    def requeue(self, failed: list[Outgoing]) -> None:
        """Deliveries that failed: the default (Graph) keeps no retry queue."""


@dataclass
class Outgoing:
    """One POST the sandbox makes to someone else's endpoint (a Graph notification, a Raynet webhook)."""

    url: str
    payload: Any
    headers: dict[str, str] = field(default_factory=dict)


DELIVERY = threading.local()


def delivery_session():
    """The sandboxes' own HTTP session (a TrustedSession: TLS verified with the demo's CA bundle, as our sessions),
    one per thread and kept alive: a new TLS connection per delivery costs a handshake and a bundle load each."""
    from django.conf import settings

    from syncapp.providers.base import TrustedSession

    session = getattr(DELIVERY, "session", None)
    if session is None or session.verify != (settings.SANDBOX_CA_BUNDLE or True):
        DELIVERY.session = session = TrustedSession()
    return session


def post_outgoing(item: Outgoing) -> bool:
    """POST one delivery; True on a 2xx."""
    import requests

    try:
        reply = delivery_session().post(item.url, json=item.payload, headers=item.headers, timeout=(10, 60))
    except requests.RequestException:
        return False
    return 200 <= reply.status_code < 300


def request_from_prepared(prepared, base_url: str) -> SandboxRequest:
    """A SandboxRequest from a requests.PreparedRequest (the `responses` front)."""
    parts = urlsplit(prepared.url)
    base_path = urlsplit(base_url).path.rstrip("/")
    body = prepared.body or b""
    return SandboxRequest(
        method=prepared.method,
        path=parts.path[len(base_path) :].lstrip("/"),
        query=parse_qs(parts.query, keep_blank_values=True),
        headers={k.lower(): v for k, v in prepared.headers.items()},
        body=body.encode() if isinstance(body, str) else body,
        url=prepared.url,
    )


def register_with_responses(rsps, base_url: str, sandbox: Sandbox) -> None:
    """Route every request below `base_url` to the sandbox, on a `responses.RequestsMock`."""

    def callback(prepared):
        reply = sandbox.handle(request_from_prepared(prepared, base_url))
        if reply.kill:
            raise ClientKilled(f"{prepared.method} {prepared.url}")
        if reply.disconnect:
            return broken_connection(reply.disconnect, prepared.url)
        data, content_type = reply.encoded()
        headers = {k: v for k, v in reply.headers.items() if k.lower() != "content-type"}
        headers["Content-Type"] = content_type
        return reply.status, headers, data

    pattern = re.compile(re.escape(base_url.rstrip("/")) + r"(/.*)?$")
    for method in ("GET", "POST", "PUT", "PATCH", "DELETE"):
        rsps.add_callback(method, pattern, callback=callback)


def broken_connection(kind: str, url: str) -> Exception:
    """The exception requests raises when the connection fails this way (urllib3 2.x shapes)."""
    import requests
    from urllib3.exceptions import MaxRetryError, NewConnectionError, ProtocolError

    if kind == "refused":
        refused = NewConnectionError(None, "Failed to establish a new connection: [Errno 111] Connection refused")
        return requests.ConnectionError(MaxRetryError(None, url, refused))
    if kind == "reset":
        reset = ConnectionResetError(104, "Connection reset by peer")
        return requests.ConnectionError(ProtocolError("Connection aborted.", reset))
    return requests.ReadTimeout(f"Read timed out: {url}")


class ClientKilled(BaseException):
    """In-process stand-in for SIGKILL right after the sandbox carried out a request: like KeyboardInterrupt,
    no `except Exception` in the code under test stops it, and nothing after the call runs."""


def kill_client(pid: int, *, wait: float = 10.0) -> None:
    """SIGKILL the client process and wait until it is dead, so it can never read the reply (Linux /proc)."""
    if isinstance(pid, bool) or pid <= 1:
        raise ValueError("the HTTP front can only kill a client process given by its pid")
    os.kill(pid, signal.SIGKILL)
    stat = Path(f"/proc/{pid}/stat")
    give_up = time.monotonic() + wait
    while time.monotonic() < give_up:
        try:
            if stat.read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                return
        except (FileNotFoundError, ProcessLookupError):
            return
        time.sleep(0.01)


def wait_for_release(name: str, number: int, seconds: float) -> None:
    """Hold a reply until the stored state lists `number` as released (read without locking the row)."""
    from syncapp.models import SandboxState

    give_up = time.monotonic() + seconds
    while time.monotonic() < give_up:
        data = SandboxState.objects.filter(name=name).values_list("data", flat=True).first() or {}
        if number in data.get("released", []):
            return
        time.sleep(0.05)


@contextmanager
def stored_sandbox(sandbox_class: type[Sandbox], key: str) -> Iterator[Sandbox]:
    """A sandbox whose state lives in PostgreSQL, locked for the duration (HTTP front). What the changes made
    meanwhile send out (notifications, webhooks) is POSTed after the state is saved and the lock released."""
    from syncapp.models import SandboxState

    with transaction.atomic():
        row, _ = SandboxState.objects.select_for_update().get_or_create(
            name=f"{sandbox_class.name}:{key}", defaults={"data": {}}
        )
        sandbox = sandbox_class(row.data or None)
        sandbox.deferring = True
        yield sandbox
        outgoing = sandbox.take_outgoing()
        row.data = sandbox.state
        row.save(update_fields=["data"])
    failed = [item for item in outgoing if not post_outgoing(item)]
    if failed:
        with transaction.atomic():
            row = SandboxState.objects.select_for_update().get(pk=row.pk)
            sandbox = sandbox_class(row.data)
            sandbox.requeue(failed)
            row.data = sandbox.state
            row.save(update_fields=["data"])


def make_sandbox_view(sandbox_class: type[Sandbox]):
    """A Django view serving `sandbox_class` below the URL it is mounted at (`<path:path>`)."""

    @csrf_exempt
    def view(request: HttpRequest, key: str, path: str = "") -> HttpResponse:
        sandbox_request = SandboxRequest(
            method=request.method,
            path=path,
            query={k: request.GET.getlist(k) for k in request.GET},
            headers={k.lower(): v for k, v in request.headers.items()},
            body=request.body,
            url=request.build_absolute_uri(),
        )
        with stored_sandbox(sandbox_class, key) as sandbox:
            reply = sandbox.handle(sandbox_request)
        if reply.kill:
            kill_client(reply.kill)  # only now: the write is committed, the reply not yet sent
        if reply.hold:
            wait_for_release(f"{sandbox_class.name}:{key}", *reply.hold)
        data, content_type = reply.encoded()
        response = HttpResponse(data, status=reply.status, content_type=content_type)
        for name, value in reply.headers.items():
            if name.lower() != "content-type":
                response[name] = value
        return response

    return view
