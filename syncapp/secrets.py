"""Secrets at rest: Fernet encryption with rotating keys, and a value that never prints itself."""

from __future__ import annotations

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.db import models
from django.db.models.query_utils import DeferredAttribute

MASK = "••••••••"


class Secret:
    """A clear-text secret that shows as a mask in reprs, templates, logs and tracebacks."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __str__(self) -> str:
        return MASK if self._value else ""

    def __repr__(self) -> str:
        return f"Secret({MASK!r})"


def _fernet() -> MultiFernet:
    return MultiFernet([Fernet(key.encode()) for key in settings.SECRET_ENCRYPTION_KEYS])


def encrypt(clear: str) -> str:
    return _fernet().encrypt(clear.encode()).decode()


def decrypt(token: str) -> str:
    try:
        return _fernet().decrypt(token.encode()).decode()
    except InvalidToken:
        raise ValueError(
            "A stored secret cannot be decrypted with any key in SECRET_ENCRYPTION_KEYS "
            "(was a key removed before `manage.py rotate_secrets` ran?)"
        ) from None


class SecretAttribute(DeferredAttribute):
    """Wraps whatever is assigned in a Secret, so a row built from a plain str never shows it either."""

    def __set__(self, instance, value) -> None:
        instance.__dict__[self.field.attname] = self.field.to_python(value)


class EncryptedSecretField(models.TextField):
    """Stores a Secret as a Fernet token; reads give a Secret back, never a plain str."""

    descriptor_class = SecretAttribute

    def from_db_value(self, value, expression, connection):
        if value is None:
            return None
        return Secret(decrypt(value) if value else "")

    def to_python(self, value):
        if value is None or isinstance(value, Secret):
            return value
        return Secret(value)

    def get_prep_value(self, value):
        if value is None:
            return None
        clear = value.reveal() if isinstance(value, Secret) else str(value)
        return encrypt(clear) if clear else ""

    def value_to_string(self, obj):
        return MASK
