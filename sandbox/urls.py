"""The simulators' routes, mounted under /simulators/ by playpay.urls only when the sandbox app is installed."""

from django.urls import include, path

from sandbox.simulators import core, reference

urlpatterns = [
    path("camara/", include("sandbox.simulators.camara")),
    path("parlayx/", include("sandbox.simulators.parlayx")),
    path("aggregator/v1/balance", reference.aggregator_balance, name="simulator-aggregator-balance"),
    path("aggregator/", include("sandbox.simulators.aggregator")),
    path("fx/rates", reference.fx_rates, name="simulator-fx-rates"),
    path("<slug:name>/_settings", core.control_settings, name="simulator-settings"),
    path("<slug:name>/_reset", core.control_reset, name="simulator-reset"),
    path("<slug:name>/_sms", core.sms_inbox, name="simulator-sms"),
    path("<slug:name>/_charges", core.charges_ledger, name="simulator-charges"),
]
