"""Response headers Django 5.2 does not set itself: the Content-Security-Policy (Django 6.0 adds its own)."""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlsplit

from django.conf import settings
from django.http import HttpRequest, HttpResponse


def content_security_policy() -> str:
    """settings.CONTENT_SECURITY_POLICY plus form-action: our forms post to us, and the Microsoft consent
    form redirects to the sign-in host of a cloud (browsers apply form-action to that redirect too)."""
    hosts = sorted(
        {"{0.scheme}://{0.netloc}".format(urlsplit(c["authority"])) for c in settings.MICROSOFT_CLOUDS.values()}
    )
    return f"{settings.CONTENT_SECURITY_POLICY}; form-action 'self' {' '.join(hosts)}"


class ContentSecurityPolicyMiddleware:
    """Adds the Content-Security-Policy to every response that has none (no inline script or style)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        response.headers.setdefault("Content-Security-Policy", content_security_policy())
        return response
