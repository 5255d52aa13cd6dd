"""The endpoint carriers call back: POST /api/v1/carriers/<slug>/notifications/."""

from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from payments.services.notifications import receive_notification
from playpay.api.problems import BODY_PROBLEMS, ProblemSerializer


class CarrierNotificationView(APIView):
    # Carriers authenticate by signing the body (verified by their adapter), not with an API key.
    authentication_classes = []
    permission_classes = [AllowAny]
    throttle_classes = []
    parser_classes = []

    @extend_schema(
        request=None,
        parameters=[
            OpenApiParameter(
                "slug",
                {"type": "string", "pattern": "^[-a-zA-Z0-9_]+$"},
                OpenApiParameter.PATH,
                description="The carrier.",
            )
        ],
        responses={
            200: OpenApiResponse(
                inline_serializer("NotificationReceipt", {"result": serializers.CharField()}),
                description="applied or duplicate",
            ),
            204: OpenApiResponse(description="applied or duplicate (carriers that expect no body)"),
            400: OpenApiResponse(ProblemSerializer, description="`notification_rejected`: not a notification we read."),
            401: OpenApiResponse(ProblemSerializer, description="`notification_signature_invalid`."),
            404: OpenApiResponse(ProblemSerializer, description="`unknown_carrier`."),
            413: BODY_PROBLEMS[413],
        },
        summary="Carrier callback (signed by the carrier)",
    )
    def post(self, request: Request, slug: str) -> Response:
        receipt = receive_notification(carrier_slug=slug, headers=request.headers, body=request.body)
        if receipt.ack_status == 204:
            return Response(status=204)
        return Response({"result": receipt.result}, status=receipt.ack_status)
