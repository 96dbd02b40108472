"""Secrets at rest: Fernet encryption with rotating keys, and a value that never prints itself.

Rows are decrypted lazily, when the secret is used (`reveal()`): a row encrypted under a key that is no
longer configured still loads, lists and renders in the admin, says "cannot be decrypted" there, and
fails only the call that needs the clear value, in plain words.
"""

from __future__ import annotations

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.db import models
from django.db.models.query_utils import DeferredAttribute

MASK = "••••••••"
UNREADABLE = "cannot be decrypted: enter the key again"


class UndecryptableSecret(ValueError):
    """No key in SECRET_ENCRYPTION_KEYS decrypts a stored secret."""


class Secret:
    """A clear-text secret that shows as a mask in reprs, templates, logs and tracebacks.

    Built from a stored token (`Secret.stored`), it decrypts on first `reveal()`.
    """

    __slots__ = ("_token", "_value")

    def __init__(self, value: str) -> None:
        self._value: str | None = value
        self._token = ""

    @classmethod
    def stored(cls, token: str) -> Secret:
        secret = cls("")
        secret._value = None
        secret._token = token
        return secret

    def reveal(self) -> str:
        if self._value is None:
            self._value = decrypt(self._token)
        return self._value

    @property
    def readable(self) -> bool:
        try:
            self.reveal()
        except UndecryptableSecret:
            return False
        return True

    @property
    def token(self) -> str:
        """The stored token while the clear value is unknown (kept as it is on save), else ""."""
        return self._token if self._value is None else ""

    def __bool__(self) -> bool:
        return bool(self._token) if self._value is None else bool(self._value)

    def _identity(self) -> tuple[str, str]:
        return ("clear", self._value) if self.readable else ("token", self._token)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._identity() == self._identity()

    def __hash__(self) -> int:
        return hash(self._identity())

    def __str__(self) -> str:
        return MASK if self else ""

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
        raise UndecryptableSecret(
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
        return Secret.stored(value) if value else Secret("")

    def to_python(self, value):
        if value is None or isinstance(value, Secret):
            return value
        return Secret(value)

    def get_prep_value(self, value):
        if value is None:
            return None
        if isinstance(value, Secret) and value.token and not value.readable:
            return value.token  # unreadable now, perhaps readable with a key put back: never lose it
        clear = value.reveal() if isinstance(value, Secret) else str(value)
        return encrypt(clear) if clear else ""

    def value_to_string(self, obj):
        return MASK
