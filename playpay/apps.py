from django.apps import AppConfig
from django.contrib.admin.apps import AdminConfig


class PlayPayAdminConfig(AdminConfig):
    default_site = "playpay.admin_site.PlayPayAdminSite"

    def ready(self) -> None:
        super().ready()
        from playpay import admin_lists, checks  # noqa: F401  (checks registers the deployment checks)

        admin_lists.install()


class PlayPayConfig(AppConfig):
    """The project package as an app of its own: the jobs and commands shared by every app (partitions)."""

    name = "playpay"
    verbose_name = "PlayPay"
