"""The endpoint carriers call back: POST /api/v1/carriers/<slug>/notifications/."""

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from payments.services.notifications import receive_notification
from playpay.api.problems import BODY_PROBLEMS


class CarrierNotificationView(APIView):
    # Carriers authenticate by signing the body (verified by their adapter), not with an API key.
    authentication_classes = []
    permission_classes = [AllowAny]
    throttle_classes = []
    parser_classes = []

    @extend_schema(
        request=None,
        responses={
            200: OpenApiResponse(description="applied or duplicate"),
            400: None,
            401: None,
            404: None,
            413: BODY_PROBLEMS[413],
        },
        summary="Carrier callback (signed by the carrier)",
    )
    def post(self, request: Request, slug: str) -> Response:
        receipt = receive_notification(carrier_slug=slug, headers=request.headers, body=request.body)
        if receipt.ack_status == 204:
            return Response(status=204)
        return Response({"result": receipt.result}, status=receipt.ack_status)
