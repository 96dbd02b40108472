from __future__ import annotations

from django.urls import path

from syncapp import views

urlpatterns = [
    path("", views.index, name="index"),
    path("new/", views.organization_create, name="organization_create"),
    path("invitations/<uuid:invitation>/", views.invitation, name="invitation"),
    path("microsoft/consent/", views.microsoft_consent_callback, name="microsoft_consent_callback"),
    path("org/<uuid:code>/", views.organization_overview, name="organization"),
    path("org/<uuid:code>/log/", views.sync_log, name="log"),
    path("org/<uuid:code>/members/", views.members, name="members"),
    path("org/<uuid:code>/members/<uuid:member>/", views.member_change, name="member_change"),
    path("org/<uuid:code>/invitations/<uuid:invitation>/cancel/", views.invitation_cancel, name="invitation_cancel"),
    path("org/<uuid:code>/users/<uuid:mapping>/", views.mapping_action, name="mapping_action"),
    path("org/<uuid:code>/disconnect/<str:side>/", views.disconnect, name="disconnect"),
    path("org/<uuid:code>/setup/", views.setup, name="setup"),
    path("org/<uuid:code>/setup/raynet/", views.setup_raynet, name="setup_raynet"),
    path("org/<uuid:code>/setup/microsoft/", views.setup_microsoft, name="setup_microsoft"),
    path("org/<uuid:code>/setup/users/", views.setup_mapping, name="setup_mapping"),
    path("org/<uuid:code>/setup/policies/", views.setup_policies, name="setup_policies"),
    path("org/<uuid:code>/setup/preview/", views.setup_preview, name="setup_preview"),
]
