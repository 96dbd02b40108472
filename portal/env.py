"""Small helpers that read settings from the environment (see healthchecks' hc/settings.py)."""

from __future__ import annotations

import os

from django.core.exceptions import ImproperlyConfigured


def envbool(name: str, default: str) -> bool:
    return os.environ.get(name, default).strip().lower() in ("1", "true", "yes", "on")


def envstr(name: str, default: str = "") -> str:
    return os.environ.get(name, default).strip()


def envint(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a whole number, got {value!r}") from None


def envlist(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


def envsecret(name: str, *, debug: bool, dev_default: str) -> str:
    """A secret: required in production, a fixed development value otherwise."""
    value = envstr(name)
    if value:
        return value
    if not debug:
        raise ImproperlyConfigured(
            f"{name} is not set. It is required when DEBUG is off; see the configuration table in README.md."
        )
    return dev_default
