from django.urls import include, path

from carriers.simulators import core

urlpatterns = [
    path("camara/", include("carriers.simulators.camara")),
    path("parlayx/", include("carriers.simulators.parlayx")),
    path("aggregator/", include("carriers.simulators.aggregator")),
    path("<slug:name>/_settings", core.control_settings, name="simulator-settings"),
    path("<slug:name>/_reset", core.control_reset, name="simulator-reset"),
    path("<slug:name>/_sms", core.sms_inbox, name="simulator-sms"),
]
