"""A real browser (Playwright driving Debian's chromium): an admin sets up an organization from nothing, in Czech and
English; and on the seeded demo a person moves a meeting in the simulated Outlook and finds it in the simulated Raynet.

Both sandboxes keep their state in PostgreSQL (the HTTP front's rows), so the browser, the portal and the
test see one Raynet and one Microsoft tenant:
- Raynet is served by the live server itself at /sandbox/raynet/demo/api/v2/ (the portal's "Sandbox" region);
- Microsoft needs https (MSAL refuses anything else), so https://login.sandbox.test and
  https://graph.sandbox.test are answered in-process from the same state: for the portal's HTTP client by
  `responses`, for the browser (the admin-consent page) by Playwright's request routing.
Screenshots of every step land in test-artifacts/browser/<language>/.

Runs when /usr/bin/chromium exists; otherwise it is skipped with a message, except where
BROWSER_TEST_REQUIRED=1 (.ci/run sets it after installing chromium), where it fails.
"""

from __future__ import annotations

import os
import re
import shutil
from datetime import UTC, timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import responses
from django.conf import settings as django_settings
from django.contrib.auth import get_user_model
from django.utils import timezone
from django_q.conf import Conf

from syncapp.demo import DEMO_KEY, JANA, demo_seed, local
from syncapp.models import Organization, SyncLogEntry, SyncRun
from syncapp.providers.outlook import reset_token_apps
from syncapp.sandbox.base import SandboxRequest, request_from_prepared, stored_sandbox
from syncapp.sandbox.outlook import GraphSandbox
from syncapp.sandbox.raynet import RaynetSandbox
from tests.outlook_fixtures import GRAPH_HOST, LOGIN_HOST, OUTLOOK_CLIENT_ID, OUTLOOK_CLIENT_SECRET, OUTLOOK_TENANT_ID
from tests.test_demo import demo_certificates_dir, demo_https  # noqa: F401 - the seed's HTTPS server, shared
from tests.test_webhooks import run_queued

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "browser"
SANDBOX_KEY = "demo"
API_USER, API_KEY = "api@acme.test", "browser-test-key"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

if not CHROMIUM.exists():
    message = "the browser test needs Debian's chromium: `sudo apt-get install -y chromium` enables it"
    if os.environ.get("BROWSER_TEST_REQUIRED") == "1":
        pytest.fail(message, pytrace=False)
    pytest.skip(message, allow_module_level=True)

sync_api = pytest.importorskip("playwright.sync_api", reason="pip install -r requirements/dev.txt")


def answer_from_stored_graph(prepared):
    """A `responses` callback: the Microsoft hosts answered from the sandbox state in PostgreSQL."""
    base = f"{urlsplit(prepared.url).scheme}://{urlsplit(prepared.url).netloc}"
    with stored_sandbox(GraphSandbox, SANDBOX_KEY) as sandbox:
        reply = sandbox.handle(request_from_prepared(prepared, base))
    data, content_type = reply.encoded()
    return reply.status, {**reply.headers, "Content-Type": content_type}, data


def route_to_stored_graph(route, request) -> None:
    """A Playwright route: the browser's visit of the Microsoft consent page, answered from the same state."""
    parts = urlsplit(request.url)
    sandbox_request = SandboxRequest(
        method=request.method,
        path=parts.path.lstrip("/"),
        query=parse_qs(parts.query, keep_blank_values=True),
        headers={k.lower(): v for k, v in request.headers.items()},
        body=request.post_data_buffer or b"",
        url=request.url,
    )
    with stored_sandbox(GraphSandbox, SANDBOX_KEY) as sandbox:
        reply = sandbox.handle(sandbox_request)
    data, content_type = reply.encoded()
    route.fulfill(status=reply.status, headers={**reply.headers, "Content-Type": content_type}, body=data)


@pytest.fixture
def sandboxes(live_server, settings, retry_waits):
    """Alice in Raynet (with a meeting next week) and in the Microsoft tenant, whose consent is not granted."""
    with stored_sandbox(RaynetSandbox, SANDBOX_KEY) as raynet:
        raynet.add_user(API_USER, "Acme Integration", api_key=API_KEY)
        alice = raynet.add_person("alice@acme.test", "Alice Novak")
        raynet.state["persons"][str(alice)]["email"] = "alice@acme.test"
        start = (timezone.now() + timedelta(days=7)).replace(minute=0, second=0, microsecond=0)
    with stored_sandbox(RaynetSandbox, SANDBOX_KEY) as raynet:
        raynet.state["persons"].pop(str(alice))  # the person comes with the user account below
        _user, alice = raynet.add_user("alice@acme.test", "Alice Novak")
        raynet.ui_create_activity("meeting", alice, "Quarterly review", start, start + timedelta(hours=1))
    with stored_sandbox(GraphSandbox, SANDBOX_KEY) as graph:
        graph.add_tenant(OUTLOOK_TENANT_ID, OUTLOOK_CLIENT_ID, OUTLOOK_CLIENT_SECRET, consent=False)
        graph.add_user(OUTLOOK_TENANT_ID, "alice@acme.test", "Alice Novak")
    settings.MICROSOFT_CLIENT_ID = OUTLOOK_CLIENT_ID
    settings.MICROSOFT_CLIENT_SECRET = OUTLOOK_CLIENT_SECRET
    settings.MICROSOFT_CLOUDS = {
        **settings.MICROSOFT_CLOUDS,
        "global": {"graph": f"{GRAPH_HOST}/v1.0", "authority": LOGIN_HOST},
    }
    reset_token_apps()
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        rsps.add_passthru(live_server.url)
        for host in (GRAPH_HOST, LOGIN_HOST):
            for method in ("GET", "POST", "PATCH", "DELETE", "PUT"):
                rsps.add_callback(method, re.compile(re.escape(host) + r"(/.*)?$"), callback=answer_from_stored_graph)
        yield
    reset_token_apps()


@pytest.fixture
def browser(language):
    """A fresh chromium profile whose language (Accept-Language) is the test's."""
    # Playwright's sync API runs an event loop in this thread; Django's ORM calls from it are still synchronous.
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    profile = ARTIFACTS / ".profile"
    shutil.rmtree(profile, ignore_errors=True)
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            locale=language,
        )
        yield context
        context.close()
    shutil.rmtree(profile, ignore_errors=True)
    os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)


WORDS = {
    "en": {"home": "Your organizations", "raynet": "Connect Raynet", "preview": "First-sync preview", "log": "Log"},
    "cs": {
        "home": "Vaše organizace",
        "raynet": "Připojit Raynet",
        "preview": "Náhled první synchronizace",
        "log": "Protokol",
    },
}


@pytest.mark.parametrize("language", ["cs", "en"])
def test_an_admin_goes_from_nothing_to_a_synced_event_in_the_browser(live_server, sandboxes, browser, language):
    words = WORDS[language]
    shots = ARTIFACTS / language
    shutil.rmtree(shots, ignore_errors=True)
    shots.mkdir(parents=True)
    browser.route(f"{LOGIN_HOST}/**", route_to_stored_graph)
    page = browser.new_page()
    step = iter(range(1, 100))

    def shot(name: str) -> None:
        page.screenshot(path=str(shots / f"{next(step):02d}-{name}.png"), full_page=True)

    page.goto(f"{live_server.url}/accounts/signup/")
    page.fill("input[name=email]", f"admin-{language}@acme.test")
    page.fill("input[name=password1]", "a long Passw0rd for tests")
    page.fill("input[name=password2]", "a long Passw0rd for tests")
    shot("sign-up")
    page.click("form[action='/accounts/signup/'] button[type=submit]")
    page.wait_for_url(f"{live_server.url}/")
    assert words["home"] in page.inner_text("h1")
    shot("no-organization")

    page.click("a[href='/new/']")
    page.fill("input[name=name]", f"Acme {language}")
    page.click("main button[type=submit]")
    assert words["raynet"] in page.inner_text("h1")
    shot("connect-raynet")

    page.fill("input[name=instance_name]", "sandbox")
    page.select_option("select[name=api_base_url]", f"{live_server.url}/sandbox/raynet/{SANDBOX_KEY}/api/v2/")
    page.fill("input[name=api_user_email]", API_USER)
    page.fill("input[name=api_key]", API_KEY)
    page.click("main button[type=submit]")
    page.wait_for_url("**/setup/microsoft/")
    assert API_KEY not in page.content()
    shot("connect-microsoft")

    page.click("main form:has(select[name=cloud]) button[type=submit]")
    page.wait_for_url(f"{LOGIN_HOST}/**")
    shot("microsoft-consent-page")
    page.click("button[value=accept]")
    page.wait_for_url("**/setup/users/")
    shot("map-users")

    row = page.locator("tr", has=page.locator("input[value='alice@acme.test']"))
    row.locator("input[type=checkbox]").check()
    page.click("main button[type=submit]:not([name])")
    page.wait_for_url("**/setup/policies/")
    shot("policies")

    page.check("input[name=private_events_mode][value=time_blocker]")
    page.click("main button[type=submit]")
    page.wait_for_url("**/setup/preview/")
    assert words["preview"] in page.inner_text("h1")
    outlook_row = page.locator("section.panel tbody tr").first.locator("td")
    assert outlook_row.all_inner_texts() == ["1", "0", "0"]  # the dry run: Alice's meeting goes to Outlook
    shot("preview")

    page.click("main form button[type=submit]")
    page.wait_for_url(re.compile(r".*/org/[0-9a-f-]+/$"))
    shot("dashboard")
    organization = Organization.objects.get(name=f"Acme {language}")
    assert organization.policy.sync_enabled and organization.policy.private_events_mode == "time_blocker"

    run_the_worker(organization)
    page.click(f"nav.org-nav a[href='/org/{organization.code}/log/']")
    assert words["log"] in page.inner_text("h1")
    shot("log")
    entry = SyncLogEntry.objects.get(organization=organization, direction="to_outlook")
    assert entry.action.startswith("creat")
    assert page.locator("tbody tr").count() == 1 and "Quarterly review" in page.inner_text("tbody")
    with stored_sandbox(GraphSandbox, SANDBOX_KEY) as graph:
        assert [e["subject"] for e in graph.state["events"].values()] == ["Quarterly review"]


def run_the_worker(organization: Organization) -> None:
    """What the background worker does with the first sync the admin started (the queue has no worker here)."""
    from syncapp.sync.service import sync_organization

    sync_organization(organization=organization, trigger="manual")


@pytest.mark.usefixtures("demo_https")
@pytest.mark.parametrize("language", ["cs"])
def test_an_event_edited_in_simulated_outlook_shows_in_simulated_raynet(live_server, browser, language, monkeypatch):
    """On the seeded demo (syncapp/demo.py, its sandboxes and hooks over HTTPS): Jana moves a customer meeting
    in the simulated Outlook; Graph's change notification reaches our endpoint and the sync it starts writes
    Raynet (tasks run at once here, as a worker would within seconds), and the simulated Raynet shows it."""
    seed = demo_seed()
    run_queued()  # the echoes of the seed's own writes
    monkeypatch.setattr(Conf, "SYNC", True)
    jana = seed.organization.mappings.get(raynet_email=JANA.email)
    title, new_start = "Pivovar Hora: nabídka výčepního zařízení", local(3, 9)
    shots = ARTIFACTS / "sandbox"
    shutil.rmtree(shots, ignore_errors=True)
    shots.mkdir(parents=True)
    sign_in(browser, live_server.url, get_user_model().objects.get(email=seed.admin_email))
    page = browser.new_page()

    page.goto(f"{live_server.url}/")
    page.click("a.demo-link")
    page.click(f"a[href='/sandbox/{DEMO_KEY}/outlook/']")
    assert "Simulovaný Outlook — jen pro ukázku" in page.inner_text(".simulated-banner")
    page.select_option("select[name=mailbox]", jana.outlook_user_id)
    page.click("form.picker button")
    page.click(f"tr[data-subject='{title}'] a.button")
    page.fill("form:has(button[name=move]) input[name=start]", local_input(new_start))
    page.screenshot(path=str(shots / "01-outlook-move.png"), full_page=True)
    page.click("button[name=move]")
    page.wait_for_selector(f"tr[data-subject='{title}']")
    page.screenshot(path=str(shots / "02-outlook-calendar.png"), full_page=True)

    page.click(".sandbox-nav a[href$='/raynet/']")
    page.select_option("select[name=user]", str(jana.raynet_user_id))
    page.click("form.picker button")
    row = page.locator(f"tr[data-title='{title}']")
    row.wait_for()
    page.screenshot(path=str(shots / "03-raynet-calendar.png"), full_page=True)
    assert new_start.strftime("%H:%M") in row.inner_text()
    with stored_sandbox(RaynetSandbox, DEMO_KEY) as raynet:
        [meeting] = [r for r in raynet.activities("meeting") if r["title"] == title]
    assert meeting["scheduledFrom"] == new_start.astimezone(UTC).isoformat()
    assert jana.runs.order_by("pk").last().trigger == SyncRun.Trigger.WEBHOOK  # the notification's run, no poll


def sign_in(browser, base_url: str, user) -> None:
    """The user signed in through a session cookie (the sign-in page has its own test above)."""
    from django.test import Client

    client = Client()
    client.force_login(user)
    cookie = client.cookies[django_settings.SESSION_COOKIE_NAME]
    browser.add_cookies([{"name": cookie.key, "value": cookie.value, "url": base_url}])


def local_input(moment) -> str:
    return timezone.localtime(moment).strftime("%Y-%m-%dT%H:%M")
