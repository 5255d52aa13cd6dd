from django.urls import path

from funnel.api import FunnelEventsView

urlpatterns = [path("events/", FunnelEventsView.as_view(), name="funnel-events")]
