from django.apps import apps
from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from playpay import views

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/v1/", include("payments.api.urls")),
    path("api/v1/", include("subscriptions.api.urls")),
    path("api/v1/funnel/", include("funnel.urls")),
    path("reporting/", include("reporting.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    path("api/problems/", views.problem_types, name="problem-types"),
    path("api/problems/<slug:code>", views.problem_types, name="problem-type"),
    path("healthz", views.health, name="health"),
    path("readyz", views.readiness, name="readiness"),
    path("metrics", views.metrics, name="metrics"),
]
# Demo and test mode only (settings.SANDBOX): the carrier and reference-data simulators.
if apps.is_installed("sandbox"):
    urlpatterns.append(path("simulators/", include("sandbox.urls")))

handler404 = "playpay.views.handler404"
handler500 = "playpay.views.handler500"
