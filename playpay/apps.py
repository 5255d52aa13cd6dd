from django.contrib.admin.apps import AdminConfig


class PlayPayAdminConfig(AdminConfig):
    default_site = "playpay.admin_site.PlayPayAdminSite"
