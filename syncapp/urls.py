from __future__ import annotations

from django.urls import path

from syncapp import views

urlpatterns = [
    path("", views.index, name="index"),
    path("org/<uuid:code>/", views.organization_overview, name="organization"),
]
