"""Settings for the Raynet ⇄ Outlook sync portal. Everything comes from the environment."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

from portal.database import database_config
from portal.env import envbool, envint, envlist, envsecret, envstr

BASE_DIR = Path(__file__).resolve().parent.parent

DEBUG = envbool("DEBUG", "True")
SECRET_KEY = envsecret("SECRET_KEY", debug=DEBUG, dev_default="dev-only-insecure-secret-key")
ALLOWED_HOSTS = envlist("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]" if DEBUG else "")

# Fernet keys for secrets at rest, newest first: values are written with the
# first key and read with any of them, so a new key can be put in front and old
# rows re-encrypted with `manage.py rotate_secrets`.
SECRET_ENCRYPTION_KEYS = envlist("SECRET_ENCRYPTION_KEYS") or (
    [base64.urlsafe_b64encode(hashlib.sha256(SECRET_KEY.encode()).digest()).decode()] if DEBUG else []
)
if not SECRET_ENCRYPTION_KEYS:
    from django.core.exceptions import ImproperlyConfigured

    raise ImproperlyConfigured(
        "SECRET_ENCRYPTION_KEYS is not set. It is required when DEBUG is off; see the configuration table in README.md."
    )

# The demo (`make run` sets DEMO=1): the sandboxes stand in for Raynet and Microsoft 365, served over HTTPS by
# `manage.py serve_tls` at DEMO_HTTPS_URL (MSAL accepts only https authorities), and `manage.py seed_demo` fills
# them. Everything the demo changes below is only a default: the environment still wins.
DEMO = envbool("DEMO", "False")
DEMO_HTTPS_URL = envstr("DEMO_HTTPS_URL", "https://127.0.0.1:8443").rstrip("/")
DEMO_PASSWORD = envstr("DEMO_PASSWORD", "raysync-demo")  # the seeded logins' password, printed by the seed
# Our fakes of Raynet and Graph served over HTTP: only when the demo (or a developer) asks for them.
SANDBOX_ENABLED = envbool("SANDBOX_ENABLED", "True" if DEMO else "False")
if SANDBOX_ENABLED and not DEBUG:
    from django.core.exceptions import ImproperlyConfigured

    raise ImproperlyConfigured(
        "SANDBOX_ENABLED is on with DEBUG off: the fake Raynet and Graph are never served in production."
    )
# Our own HTTP sessions (ProviderSession, MSAL, the sandboxes' deliveries) trust this bundle (the usual CAs plus
# the demo's local CA) while the sandbox is on; nothing is installed system-wide. Made by `manage.py serve_tls`
# (syncapp/sandbox/tls.py) in .demo-tls/.
DEMO_TLS_DIR = Path(envstr("DEMO_TLS_DIR", str(BASE_DIR / ".demo-tls")))
SANDBOX_CA_BUNDLE = (
    envstr("SANDBOX_CA_BUNDLE", str(DEMO_TLS_DIR / "ca-bundle.pem") if DEMO else "") if SANDBOX_ENABLED else ""
)
DEMO_GRAPH_BASE = f"{DEMO_HTTPS_URL}/sandbox/graph/demo"

PUBLIC_BASE_URL = envstr("PUBLIC_BASE_URL", DEMO_HTTPS_URL if DEMO else "http://localhost:8000").rstrip("/")
CSRF_TRUSTED_ORIGINS = envlist("CSRF_TRUSTED_ORIGINS")

# The Microsoft app (multi-tenant, application permissions) that every organization consents to.
# The demo's app is registered in the Graph sandbox's tenant by the seed.
MICROSOFT_CLIENT_ID = envstr("MICROSOFT_CLIENT_ID", "raysync-demo-app" if DEMO else "")
MICROSOFT_CLIENT_SECRET = envstr("MICROSOFT_CLIENT_SECRET", "raysync-demo-app-secret" if DEMO else "")
# Graph base URL and authority host per cloud. The global cloud can be pointed elsewhere
# (the sandbox in tests and demos) with GRAPH_BASE_URL and MICROSOFT_AUTHORITY_HOST; the demo points it at the
# Graph sandbox served over HTTPS.
GLOBAL_GRAPH, GLOBAL_AUTHORITY = (
    (f"{DEMO_GRAPH_BASE}/v1.0", DEMO_GRAPH_BASE)
    if DEMO
    else ("https://graph.microsoft.com/v1.0", "https://login.microsoftonline.com")
)
MICROSOFT_CLOUDS = {
    "global": {
        "graph": envstr("GRAPH_BASE_URL", GLOBAL_GRAPH).rstrip("/"),
        "authority": envstr("MICROSOFT_AUTHORITY_HOST", GLOBAL_AUTHORITY).rstrip("/"),
    },
    "usgov": {"graph": "https://graph.microsoft.us/v1.0", "authority": "https://login.microsoftonline.us"},
    "china": {
        "graph": "https://microsoftgraph.chinacloudapi.cn/v1.0",
        "authority": "https://login.chinacloudapi.cn",
    },
}

# Mass-delete guard: a run that would delete more than both of these for one
# mailbox deletes nothing and flags the mailbox for an admin.
MASS_DELETE_MIN_COUNT = envint("MASS_DELETE_MIN_COUNT", 10)
MASS_DELETE_MIN_PERCENT = envint("MASS_DELETE_MIN_PERCENT", 25)
# A sync run stops between items after this many seconds (below the worker's timeout); the next run goes on.
SYNC_RUN_DEADLINE = envint("SYNC_RUN_DEADLINE", 240)
# Every page of the Raynet id listing that finds deletions is read at least this often (syncapp/sync/deletions.py).
RAYNET_DELETION_CHECK_SECONDS = envint("RAYNET_DELETION_CHECK_SECONDS", 3600)
# Occurrences of recurring Outlook series become Raynet events only this many days ahead (SPEC policy 6);
# later ones are added as they come within it (the daily whole-window read), as Dynamics 365 does.
OCCURRENCE_HORIZON_DAYS = envint("OCCURRENCE_HORIZON_DAYS", 90)
# A mailbox's first sync spends at most this share (%) of the organization's daily Raynet budget (all first
# syncs together), nearest events first; the rest follows on the next days.
FIRST_SYNC_BUDGET_SHARE = envint("FIRST_SYNC_BUDGET_SHARE", 50)

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "allauth",
    "allauth.account",
    "allauth.socialaccount",
    "allauth.socialaccount.providers.microsoft",
    "django_q",
    "syncapp",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "syncapp.security.ContentSecurityPolicyMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "allauth.account.middleware.AccountMiddleware",
]

ROOT_URLCONF = "portal.urls"
WSGI_APPLICATION = "portal.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "syncapp.views.portal_context",
            ],
        },
    },
]

DATABASES = {"default": database_config(envstr("DATABASE_URL"), BASE_DIR / ".pgdata")}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTHENTICATION_BACKENDS = [
    "django.contrib.auth.backends.ModelBackend",
    "allauth.account.auth_backends.AuthenticationBackend",
]
ACCOUNT_LOGIN_METHODS = {"email"}
ACCOUNT_SIGNUP_FIELDS = ["email*", "password1*", "password2*"]
ACCOUNT_EMAIL_VERIFICATION = envstr("ACCOUNT_EMAIL_VERIFICATION", "none" if DEBUG else "mandatory")
LOGIN_REDIRECT_URL = "/"
# allauth's limits (login and sign-up per IP, failed logins per account), kept in the shared cache
# below so that every web process counts the same attempts.
ACCOUNT_RATE_LIMITS = {"login": "30/m/ip", "login_failed": "10/m/ip,5/300s/key", "signup": "20/m/ip"}
# "Sign in with Microsoft": listed only when the app's credentials are configured (work or school
# accounts only: the `organizations` tenant). Social logins start with a POST (allauth's default).
SOCIALACCOUNT_LOGIN_ON_GET = False
SOCIALACCOUNT_EMAIL_AUTHENTICATION = False
SOCIALACCOUNT_PROVIDERS = {
    "microsoft": {
        "APPS": [
            {
                "client_id": MICROSOFT_CLIENT_ID,
                "secret": MICROSOFT_CLIENT_SECRET,
                "settings": {"tenant": "organizations"},
            }
        ]
        if MICROSOFT_CLIENT_ID and MICROSOFT_CLIENT_SECRET and envbool("MICROSOFT_SIGN_IN", "False" if DEMO else "True")
        else [],
    }
}
EMAIL_BACKEND = envstr("EMAIL_BACKEND", "django.core.mail.backends.console.EmailBackend")
DEFAULT_FROM_EMAIL = envstr("DEFAULT_FROM_EMAIL", "sync@localhost")

# The language follows the browser (Accept-Language) unless the user picked one with the switcher.
LANGUAGE_CODE = "en"
LANGUAGES = [("en", "English"), ("cs", "Čeština")]
LOCALE_PATHS = [BASE_DIR / "locale"]
TIME_ZONE = envstr("TIME_ZONE", "Europe/Prague")
USE_I18N = True
USE_TZ = True
USE_THOUSAND_SEPARATOR = True  # 24 000 in Czech, 24,000 in English (ids are printed with |unlocalize)

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = BASE_DIR / "static-collected"

# Shared by every process (allauth's rate limits): `manage.py createcachetable` makes the table.
CACHES = {"default": {"BACKEND": "django.core.cache.backends.db.DatabaseCache", "LOCATION": "portal_cache"}}

SESSION_COOKIE_SECURE = not DEBUG
CSRF_COOKIE_SECURE = not DEBUG
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if envbool("BEHIND_TLS_PROXY", "False") else None
SECURE_SSL_REDIRECT = envbool("SECURE_SSL_REDIRECT", "False" if DEBUG else "True")
SECURE_HSTS_SECONDS = envint("SECURE_HSTS_SECONDS", 0 if DEBUG else 31536000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = SECURE_HSTS_SECONDS > 0
SECURE_HSTS_PRELOAD = envbool("SECURE_HSTS_PRELOAD", "False" if DEBUG else "True")
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_HTTPONLY = True
LANGUAGE_COOKIE_SECURE = not DEBUG
LANGUAGE_COOKIE_HTTPONLY = True
LANGUAGE_COOKIE_SAMESITE = "Lax"
# No inline script or style anywhere. The middleware adds form-action: 'self' and the Microsoft sign-in
# hosts of MICROSOFT_CLOUDS (the consent form redirects there).
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "frame-ancestors 'none'; base-uri 'none'; object-src 'none'"
)

# Background work: django-q2. The ORM broker on the same PostgreSQL database by default; Q_BROKER_URL=redis://...
# switches to the Redis broker for larger installs (nothing else changes).
Q_BROKER_URL = envstr("Q_BROKER_URL")
# A worker kills a task after `timeout` s: longer than a sync run's own deadline, so a run stops between items
# by itself first. The ORM broker hands a task out again when it is not acknowledged within `retry` s: longer
# than `timeout`, or a slow task would run twice at once. A task that raised is tried `max_attempts` times in all.
Q_TIMEOUT = SYNC_RUN_DEADLINE + 60
Q_CLUSTER = {
    "name": "raysync",
    "workers": envint("Q_WORKERS", 2),
    "timeout": Q_TIMEOUT,
    "retry": Q_TIMEOUT + 120,
    "max_attempts": 2,
    # A failed task is acknowledged (taken off the queue) and kept in the Failed list: our tasks record their
    # own failures on the mapping and schedule their own retry at the time the API asked for (Retry-After),
    # so the broker must not also hand it out again at once.
    "ack_failures": True,
    "catch_up": False,
    # The guard loop checks on the workers this often; the pusher waits this long for an empty queue.
    # The guard runs the scheduler once its count of cycle seconds reaches 30 (django-q2 1.11 cluster.py,
    # Sentinel.guard; not configurable): a cycle of 30 or more runs it at the first cycle, so the tests'
    # clusters (Q_GUARD_CYCLE=30) pick up a due schedule at start instead of 30 s later.
    "guard_cycle": float(envstr("Q_GUARD_CYCLE", "0.5")),
    "poll": 0.5,
    "save_limit": 1000,
    **({"redis": Q_BROKER_URL} if Q_BROKER_URL.startswith(("redis://", "rediss://")) else {"orm": "default"}),
}
if Q_BROKER_URL and "redis" not in Q_CLUSTER:
    from django.core.exceptions import ImproperlyConfigured

    raise ImproperlyConfigured(f"Q_BROKER_URL must be a redis:// or rediss:// URL, got {Q_BROKER_URL!r}")
# The poll (the safety net under the notifications), stretched when Raynet's daily budget runs low.
SYNC_POLL_INTERVAL_MINUTES = envint("SYNC_POLL_INTERVAL_MINUTES", 5)
LOG_RETENTION_DAYS = envint("LOG_RETENTION_DAYS", 90)
# Largest notification or webhook body accepted (bytes); Graph batches at most a few hundred small items.
WEBHOOK_MAX_BODY = envint("WEBHOOK_MAX_BODY", 256 * 1024)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"syncapp": {"handlers": ["console"], "level": envstr("LOG_LEVEL", "INFO")}},
}
