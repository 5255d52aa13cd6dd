from django.contrib.admin.apps import AdminConfig


class PlayPayAdminConfig(AdminConfig):
    default_site = "playpay.admin_site.PlayPayAdminSite"

    def ready(self) -> None:
        super().ready()
        from playpay import checks  # noqa: F401  (registers the deployment checks)
