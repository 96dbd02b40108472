from django.apps import AppConfig


class SyncappConfig(AppConfig):
    name = "syncapp"
    verbose_name = "Raynet ⇄ Outlook sync"
    default_auto_field = "django.db.models.BigAutoField"
