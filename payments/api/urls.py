from django.urls import path
from rest_framework.routers import SimpleRouter

from payments.api.notifications import CarrierNotificationView
from payments.api.views import PaymentViewSet, PricePointListView

router = SimpleRouter()
router.register("payments", PaymentViewSet, basename="payment")

urlpatterns = [
    path("price-points/", PricePointListView.as_view(), name="price-point-list"),
    path("carriers/<slug:slug>/notifications/", CarrierNotificationView.as_view(), name="carrier-notification"),
    *router.urls,
]
