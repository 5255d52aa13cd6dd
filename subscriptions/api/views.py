from typing import Any

from django.db.models import QuerySet
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.generics import get_object_or_404
from rest_framework.request import Request
from rest_framework.response import Response

from payments.api.views import IDEMPOTENCY_KEY, app_of, created_response, idempotency_key_of, respond
from payments.services.carrier_flow import app_actor, pin_check_pending
from payments.services.idempotency import run_idempotent
from playpay.api.problems import BODY_PROBLEMS, LIST_PROBLEMS, PROBLEM, ProblemSerializer
from subscriptions.api.serializers import (
    EntitlementSerializer,
    SubscriptionCancelSerializer,
    SubscriptionConfirmSerializer,
    SubscriptionCreateSerializer,
    SubscriptionSerializer,
    SubscriptionStopResultSerializer,
    SubscriptionStopSerializer,
)
from subscriptions.models import Subscription, SubscriptionStatus
from subscriptions.services.subscriptions import (
    SubscriptionRequest,
    cancel_subscription,
    confirm_opt_in,
    entitlement,
    load_subscription,
    stop_subscriptions,
    subscribe,
    subscriptions_with_relations,
)

ID_PATTERN = "[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
SUBSCRIPTION_ID = OpenApiParameter(
    "id", {"type": "string", "pattern": f"^{ID_PATTERN}$"}, OpenApiParameter.PATH, description="The subscription's id."
)
USER_REF = OpenApiParameter("user_ref", OpenApiTypes.STR, description="Your id of the player.")


@extend_schema_view(
    retrieve=extend_schema(
        parameters=[SUBSCRIPTION_ID], responses={200: SubscriptionSerializer, 404: PROBLEM}, summary="A subscription"
    )
)
class SubscriptionViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet[Subscription]):
    serializer_class = SubscriptionSerializer
    queryset = Subscription.objects.none()  # the real one is per app, in get_queryset
    lookup_field = "public_id"
    lookup_url_kwarg = "id"
    lookup_value_regex = ID_PATTERN

    def get_queryset(self) -> QuerySet[Subscription]:
        queryset = subscriptions_with_relations().filter(app=app_of(self.request))
        if self.action == "list":
            params = self.request.query_params
            if params.get("status"):
                if params["status"] not in SubscriptionStatus.values:
                    raise serializers.ValidationError({"status": [f"One of: {', '.join(SubscriptionStatus.values)}."]})
                queryset = queryset.filter(status=params["status"])
            if params.get("user_ref"):
                queryset = queryset.filter(user_ref=params["user_ref"])
        return queryset.order_by("-id")

    def get_object(self) -> Subscription:
        subscription = get_object_or_404(self.get_queryset(), public_id=self.kwargs[self.lookup_url_kwarg])
        self.check_object_permissions(self.request, subscription)
        return subscription

    @extend_schema(
        parameters=[OpenApiParameter("status", OpenApiTypes.STR, enum=SubscriptionStatus.values), USER_REF],
        responses={200: SubscriptionSerializer(many=True), **LIST_PROBLEMS},
        summary="Your subscriptions, newest first",
    )
    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().list(request, *args, **kwargs)

    @extend_schema(
        request=SubscriptionCreateSerializer,
        parameters=[IDEMPOTENCY_KEY],
        responses={
            201: OpenApiResponse(
                SubscriptionSerializer,
                description="`pending_opt_in`: the player got a PIN by SMS stating the price and the period; "
                "confirm it with `POST /subscriptions/{id}/confirm/`.",
            ),
            **BODY_PROBLEMS,
            409: PROBLEM,
            422: OpenApiResponse(
                ProblemSerializer,
                description="`plan_not_available` (no such plan, or not offered on the player's carrier), "
                "`spending_cap_reached` (the first period would take what the number was charged on its carrier "
                "this calendar month above the carrier's monthly spend cap; nothing is created), "
                "`idempotency_key_reused`.",
            ),
            429: PROBLEM,
        },
        summary="Subscribe a player to a plan (starts the double opt-in)",
    )
    def create(self, request: Request) -> Response:
        app = app_of(request)
        key = idempotency_key_of(request, app)
        incoming = SubscriptionCreateSerializer(data=request.data)
        incoming.is_valid(raise_exception=True)
        subscription_request = SubscriptionRequest(**incoming.validated_data)
        return respond(
            run_idempotent(
                key,
                perform=lambda _answer_at_claim: subscribe(app=app, request=subscription_request, idempotency=key),
                render=lambda subscription: created_response(SubscriptionSerializer(subscription).data),
                load=lambda public_id: self.get_queryset().get(public_id=public_id),
            )
        )

    @extend_schema(
        request=SubscriptionConfirmSerializer,
        parameters=[SUBSCRIPTION_ID],
        responses={
            200: OpenApiResponse(
                SubscriptionSerializer,
                description="The carrier's verdict came in time: `active` once the first period is charged.",
            ),
            202: OpenApiResponse(
                SubscriptionSerializer,
                description="The PIN is being checked on the carrier's queue: poll the subscription, or await the "
                "`subscription.activated` webhook.",
            ),
            **BODY_PROBLEMS,
            404: PROBLEM,
            409: OpenApiResponse(
                ProblemSerializer,
                description="`illegal_subscription_transition` (not waiting for its opt-in), `illegal_transition` "
                "(a PIN is being checked), `pin_expired`.",
            ),
            422: OpenApiResponse(ProblemSerializer, description="`invalid_pin` (with `attempts_remaining`)."),
            503: OpenApiResponse(
                ProblemSerializer,
                description="`carrier_unavailable`: submit the PIN again after `Retry-After` seconds.",
            ),
        },
        summary="Confirm the opt-in with the PIN the player received",
    )
    @action(detail=True, methods=["post"])
    def confirm(self, request: Request, id: str) -> Response:
        subscription = self.get_object()
        incoming = SubscriptionConfirmSerializer(data=request.data)
        incoming.is_valid(raise_exception=True)
        payment = confirm_opt_in(subscription=subscription, pin=incoming.validated_data["pin"])
        answer = status.HTTP_202_ACCEPTED if pin_check_pending(payment) else status.HTTP_200_OK
        return Response(SubscriptionSerializer(load_subscription(subscription.pk)).data, status=answer)

    @extend_schema(
        request=SubscriptionCancelSerializer,
        parameters=[SUBSCRIPTION_ID],
        responses={
            200: SubscriptionSerializer,
            **BODY_PROBLEMS,
            404: PROBLEM,
            409: OpenApiResponse(ProblemSerializer, description="`illegal_subscription_transition`: already ended."),
        },
        summary="Cancel a subscription, at the period's end or now",
    )
    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, id: str) -> Response:
        subscription = self.get_object()
        incoming = SubscriptionCancelSerializer(data=request.data)
        incoming.is_valid(raise_exception=True)
        cancelled = cancel_subscription(
            subscription=subscription,
            at_period_end=incoming.validated_data["at_period_end"],
            reason=incoming.validated_data["reason"],
            actor=app_actor(app_of(request)),
            now=timezone.now(),
        )
        return Response(SubscriptionSerializer(cancelled).data)

    @extend_schema(
        parameters=[
            OpenApiParameter(
                "user_ref",
                {"type": "string", "minLength": 1, "maxLength": 128},
                required=True,
                description="Your id of the player.",
            )
        ],
        responses={200: EntitlementSerializer, **LIST_PROBLEMS},
        summary="Is this player entitled now, and until when",
    )
    @action(detail=False, methods=["get"], pagination_class=None)
    def entitlement(self, request: Request) -> Response:
        user_ref = request.query_params.get("user_ref", "")
        if not user_ref or len(user_ref) > 128:
            raise serializers.ValidationError({"user_ref": ["Your id of the player, 1 to 128 characters."]})
        found = entitlement(app=app_of(request), user_ref=user_ref, now=timezone.now())
        return Response(
            EntitlementSerializer(
                {
                    "user_ref": user_ref,
                    "entitled": found.entitled,
                    "entitled_until": found.until,
                    "subscriptions": found.subscriptions,
                }
            ).data
        )

    @extend_schema(
        request=SubscriptionStopSerializer,
        responses={
            200: OpenApiResponse(
                SubscriptionStopResultSerializer,
                description="Every subscription of the number in your app (to the plan, when given) that had not "
                "ended is cancelled now, reason `STOP from the player`, each with its `subscription.cancelled` "
                "webhook. Sending it again cancels nothing more (`cancelled` is empty).",
            ),
            **BODY_PROBLEMS,
        },
        summary="The player sent STOP: cancel their subscriptions now",
    )
    @action(detail=False, methods=["post"])
    def stop(self, request: Request) -> Response:
        incoming = SubscriptionStopSerializer(data=request.data)
        incoming.is_valid(raise_exception=True)
        cancelled = stop_subscriptions(
            app=app_of(request),
            msisdn=incoming.validated_data["msisdn"],
            plan=incoming.validated_data.get("plan"),
            now=timezone.now(),
        )
        return Response(SubscriptionStopResultSerializer({"cancelled": cancelled}).data)
