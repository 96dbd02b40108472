"""The sandboxes over HTTP, state in PostgreSQL (for the demo): mounted only when SANDBOX_ENABLED.

Raynet: {host}/sandbox/raynet/{key}/api/v2/...  Graph and its login host: {host}/sandbox/graph/{key}/...
(`{key}` names one sandbox's state, so several demos can live side by side).
"""

from __future__ import annotations

from django.urls import path

from syncapp.sandbox.base import make_sandbox_view
from syncapp.sandbox.outlook import GraphSandbox
from syncapp.sandbox.raynet import RaynetSandbox

raynet_view = make_sandbox_view(RaynetSandbox)
graph_view = make_sandbox_view(GraphSandbox)

urlpatterns = [
    path("raynet/<slug:key>/api/v2/", raynet_view),
    path("raynet/<slug:key>/api/v2/<path:path>", raynet_view),
    path("graph/<slug:key>/<path:path>", graph_view),
]
