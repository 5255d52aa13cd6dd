import json
import re
from typing import Any

from django.db.models import QuerySet
from django.http import Http404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import generics, mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response

from carriers.services import offered_price_points
from payments.api.serializers import (
    PaymentConfirmSerializer,
    PaymentCreateSerializer,
    PaymentSerializer,
    PricePointSerializer,
    RefundCreateSerializer,
    RefundSerializer,
    ReversalCreateSerializer,
    ReversalSerializer,
)
from payments.models import Payment, PaymentQuerySet, PaymentStatus, Refund
from payments.selectors import payment_of_app, payments_of_app
from payments.services.carrier_flow import app_actor, pin_check_pending
from payments.services.idempotency import (
    MAX_KEY_LENGTH,
    AnswerAtClaim,
    IdempotencyKey,
    StoredResponse,
    fingerprint,
    parse_key,
    run_idempotent,
)
from payments.services.payments import PaymentRequest, confirm_payment, create_payment
from payments.services.refunds import refunds_of, request_refund, request_reversal
from playpay.api.problems import BODY_PROBLEMS, LIST_PROBLEMS, PROBLEM, ProblemSerializer
from tenants.auth import request_app
from tenants.models import App

# Printable ASCII; no space at either end (HTTP drops it, so the server would not see the key as sent).
KEY_PATTERN = r"^[\x21-\x7e]([\x20-\x7e]*[\x21-\x7e])?$"
IDEMPOTENCY_KEY = OpenApiParameter(
    "Idempotency-Key",
    {"type": "string", "minLength": 1, "maxLength": MAX_KEY_LENGTH, "pattern": KEY_PATTERN},
    OpenApiParameter.HEADER,
    required=True,
    description="Unique per purchase attempt: 1 to 255 printable ASCII characters. Retries with the same key and body "
    "return the first response (header `Idempotent-Replayed: true`).",
)


# The payment in the path of every operation on one payment: no other text matches the URL (404).
PAYMENT_ID = OpenApiParameter(
    "id", {"type": "string", "pattern": "^[0-9a-fA-F-]{36}$"}, OpenApiParameter.PATH, description="The payment's id."
)
REPLAYED_HEADER = "Idempotent-Replayed"
COUNTRY_PATTERN = "[A-Za-z]{2}"  # ISO 3166 alpha-2; the parameter may also be empty (any country)


def app_of(request: Request) -> App:
    app = request_app(request)
    assert app is not None  # guaranteed by the IsApp permission
    return app


def idempotency_key_of(request: Request, app: App) -> IdempotencyKey:
    """The request's Idempotency-Key header (400 when missing or malformed) and its fingerprint."""
    return IdempotencyKey(
        app=app,
        key=parse_key(request.headers.get("Idempotency-Key")),
        fingerprint=fingerprint(method=request.method or "", path=request.path, body=request.data),
    )


def created_response(body: Any) -> StoredResponse:
    # Stored for replays as the client received it (UUIDs, times and decimals as JSON strings).
    return StoredResponse(status=status.HTTP_201_CREATED, body=json.loads(JSONRenderer().render(body)))


def respond(response: StoredResponse) -> Response:
    headers = {REPLAYED_HEADER: "true"} if response.replayed else None
    return Response(response.body, status=response.status, headers=headers)


@extend_schema_view(retrieve=extend_schema(parameters=[PAYMENT_ID], responses={200: PaymentSerializer, 404: PROBLEM}))
class PaymentViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet[Payment]):
    serializer_class = PaymentSerializer
    queryset = Payment.objects.none()  # the real one is per app, in get_queryset
    lookup_field = "public_id"
    lookup_url_kwarg = "id"
    lookup_value_regex = "[0-9a-fA-F-]{36}"

    def get_queryset(self) -> PaymentQuerySet:
        queryset = payments_of_app(app_of(self.request))
        if self.action == "list":
            params = self.request.query_params
            if params.get("status"):
                if params["status"] not in PaymentStatus.values:
                    raise serializers.ValidationError({"status": [f"One of: {', '.join(PaymentStatus.values)}."]})
                queryset = queryset.filter(status=params["status"])
            if params.get("user_ref"):
                queryset = queryset.filter(user_ref=params["user_ref"])
        return queryset.order_by("-id")

    def get_object(self) -> Payment:
        # By public id, from the months the id's time names (payments are partitioned by month).
        try:
            payment = payment_of_app(app_of(self.request), self.kwargs[self.lookup_url_kwarg])
        except Payment.DoesNotExist:
            raise Http404 from None
        self.check_object_permissions(self.request, payment)
        return payment

    @extend_schema(
        parameters=[
            OpenApiParameter("status", OpenApiTypes.STR, enum=PaymentStatus.values),
            OpenApiParameter("user_ref", OpenApiTypes.STR),
        ],
        responses={200: PaymentSerializer(many=True), **LIST_PROBLEMS},
    )
    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().list(request, *args, **kwargs)

    @extend_schema(
        request=PaymentCreateSerializer,
        parameters=[IDEMPOTENCY_KEY],
        responses={
            201: PaymentSerializer,
            **BODY_PROBLEMS,
            403: OpenApiResponse(
                ProblemSerializer,
                description="`player_blocked`: the app's staff blocked this phone number or user_ref; nothing is "
                "created and the Idempotency-Key stays free.",
            ),
            409: PROBLEM,
            422: PROBLEM,
            429: PROBLEM,
        },
        summary="Create a payment",
    )
    def create(self, request: Request) -> Response:
        app = app_of(request)
        key = idempotency_key_of(request, app)
        incoming = PaymentCreateSerializer(data=request.data)
        incoming.is_valid(raise_exception=True)
        payment_request = PaymentRequest(**incoming.validated_data)
        return respond(
            run_idempotent(
                key,
                perform=lambda answer_at_claim: create_payment(
                    app=app, request=payment_request, idempotency=key, answer_at_claim=answer_at_claim
                ),
                render=lambda payment: created_response(PaymentSerializer(payment).data),
                load=lambda public_id: payment_of_app(app, public_id),
            )
        )

    @extend_schema(
        request=PaymentConfirmSerializer,
        parameters=[PAYMENT_ID],
        responses={
            200: OpenApiResponse(
                PaymentSerializer,
                description="The carrier's verdict came within PIN_CONFIRM_WAIT_MS: the PIN is verified (the payment "
                "is `charging`, or already final) or the carrier failed the payment.",
            ),
            202: OpenApiResponse(
                PaymentSerializer,
                description="The PIN is being checked on the carrier's queue: the payment is `pin_sent` with "
                "`next_action` `wait`. Poll `GET /payments/{id}/` (or await the webhook of the final state); a "
                "PIN the carrier refused shows as `next_action` `enter_pin` with `pin_error`.",
            ),
            **BODY_PROBLEMS,
            404: PROBLEM,
            409: OpenApiResponse(
                ProblemSerializer,
                description="`illegal_transition` (not waiting for a PIN, or one is being checked), `pin_expired`.",
            ),
            422: OpenApiResponse(
                ProblemSerializer,
                description="`invalid_pin` (with `attempts_remaining`), when the verdict came within the wait.",
            ),
            503: OpenApiResponse(
                ProblemSerializer,
                description="`carrier_unavailable`: the carrier could not check the PIN (within the wait); submit it "
                "again after `Retry-After` seconds (the header, and `retry_after` in the body: the wait the carrier "
                "or its circuit breaker asked for, else 2). `database_unavailable`: the database did not answer in "
                "time.",
            ),
        },
        summary="Confirm a PIN payment with the PIN the player received",
    )
    @action(detail=True, methods=["post"])
    def confirm(self, request: Request, id: str) -> Response:
        payment = self.get_object()
        incoming = PaymentConfirmSerializer(data=request.data)
        incoming.is_valid(raise_exception=True)
        payment = confirm_payment(payment=payment, pin=incoming.validated_data["pin"])
        answer = status.HTTP_202_ACCEPTED if pin_check_pending(payment) else status.HTTP_200_OK
        return Response(PaymentSerializer(payment).data, status=answer)

    @extend_schema(
        methods=["POST"],
        request=RefundCreateSerializer,
        parameters=[PAYMENT_ID, IDEMPOTENCY_KEY],
        responses={201: RefundSerializer, **BODY_PROBLEMS, 404: PROBLEM, 409: PROBLEM, 422: PROBLEM},
        summary="Refund a payment, fully or in part",
    )
    @extend_schema(
        methods=["GET"],
        parameters=[PAYMENT_ID],
        responses={200: RefundSerializer(many=True), 404: PROBLEM},
        summary="A payment's refunds",
    )
    @action(detail=True, methods=["get", "post"], pagination_class=None)
    def refunds(self, request: Request, id: str) -> Response:
        payment = self.get_object()
        if request.method == "GET":
            return Response(RefundSerializer(refunds_of(payment).order_by("id"), many=True).data)
        app = app_of(request)
        key = idempotency_key_of(request, app)
        incoming = RefundCreateSerializer(data=request.data)
        incoming.is_valid(raise_exception=True)

        def perform(_: AnswerAtClaim[Refund]) -> Refund:  # the refund's answer is rendered after the commit
            return request_refund(
                payment=payment,
                amount_minor=incoming.validated_data.get("amount_minor"),
                reason=incoming.validated_data["reason"],
                actor=app_actor(app),
                idempotency=key,
            )

        return respond(
            run_idempotent(
                key,
                perform=perform,
                render=lambda refund: created_response(RefundSerializer(refund).data),
                load=lambda public_id: refunds_of(payment).get(public_id=public_id),
            )
        )

    @extend_schema(
        request=ReversalCreateSerializer,
        parameters=[PAYMENT_ID],
        responses={201: ReversalSerializer, **BODY_PROBLEMS, 404: PROBLEM, 409: PROBLEM},
        summary="Reverse a charge (e.g. the item could not be delivered)",
    )
    @action(detail=True, methods=["post"])
    def reversal(self, request: Request, id: str) -> Response:
        payment = self.get_object()
        incoming = ReversalCreateSerializer(data=request.data)
        incoming.is_valid(raise_exception=True)
        reversal = request_reversal(
            payment=payment, reason=incoming.validated_data["reason"], actor=app_actor(app_of(request))
        )
        return Response(ReversalSerializer(reversal).data, status=status.HTTP_201_CREATED)


class PricePointListView(generics.ListAPIView[Any]):
    serializer_class = PricePointSerializer

    @extend_schema(
        parameters=[
            OpenApiParameter(
                "country",
                {"type": "string", "pattern": f"^({COUNTRY_PATTERN})?$"},
                description="ISO 3166 alpha-2, e.g. GB",
            ),
            OpenApiParameter("carrier", OpenApiTypes.STR, description="carrier slug"),
        ],
        responses={200: PricePointSerializer(many=True), **LIST_PROBLEMS},
        summary="Price points an app may offer",
    )
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().get(request, *args, **kwargs)

    def get_queryset(self) -> QuerySet[Any]:
        country = self.request.query_params.get("country", "")
        if country and not re.fullmatch(COUNTRY_PATTERN, country):
            raise serializers.ValidationError({"country": ["An ISO 3166 alpha-2 code, e.g. GB."]})
        return offered_price_points(country=country or None, carrier=self.request.query_params.get("carrier") or None)
