"""The sandboxes over HTTP, state in PostgreSQL (for the demo): mounted only when SANDBOX_ENABLED.

Raynet: {host}/sandbox/raynet/{key}/api/v2/...  Graph and its login host: {host}/sandbox/graph/{key}/...
(`{key}` names one sandbox's state, so several demos can live side by side).
The simulated apps to act in them as a person (syncapp/sandbox/pages.py): {host}/sandbox/{key}/raynet/,
{host}/sandbox/{key}/outlook/ and its sent mail {host}/sandbox/{key}/outlook/mail/.
"""

from __future__ import annotations

from django.urls import path

from syncapp.sandbox import pages
from syncapp.sandbox.base import make_sandbox_view
from syncapp.sandbox.outlook import GraphSandbox
from syncapp.sandbox.raynet import RaynetSandbox

raynet_view = make_sandbox_view(RaynetSandbox)
graph_view = make_sandbox_view(GraphSandbox)

urlpatterns = [
    path("", pages.sandbox_index, name="sandbox-index"),
    path("<slug:key>/raynet/", pages.raynet_calendar, name="sandbox-raynet"),
    path("<slug:key>/raynet/<slug:entity>/<int:activity_id>/", pages.raynet_edit, name="sandbox-raynet-edit"),
    path("<slug:key>/raynet/<slug:entity>/<int:activity_id>/act/", pages.raynet_action, name="sandbox-raynet-act"),
    path("<slug:key>/outlook/", pages.outlook_calendar, name="sandbox-outlook"),
    path("<slug:key>/outlook/mail/", pages.outlook_mail, name="sandbox-outlook-mail"),
    path("<slug:key>/outlook/<str:mailbox>/<str:event_id>/", pages.outlook_edit, name="sandbox-outlook-edit"),
    path("<slug:key>/outlook/<str:mailbox>/<str:event_id>/act/", pages.outlook_action, name="sandbox-outlook-act"),
    path("raynet/<slug:key>/api/v2/", raynet_view),
    path("raynet/<slug:key>/api/v2/<path:path>", raynet_view),
    path("graph/<slug:key>/<path:path>", graph_view),
]
