"""Blocking players: an app takes no more payments from a phone number or one of its users."""

from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, connection, transaction

from journal.services import record_staff_action
from payments.errors import PaymentError, PlayerBlocked
from payments.models import PlayerBlock
from payments.selectors import Player
from payments.services.staff import staff_actor
from playpay.redaction import mask_msisdn
from tenants.models import App


class AlreadyBlocked(PaymentError):
    code = "player_already_blocked"
    title = "This player is already blocked for this app"
    http_status = 409


def _described(player: Player) -> str:
    return f"number {mask_msisdn(player.msisdn)}" if player.msisdn else f"user {player.user_ref}"


def block_player(*, user: AbstractBaseUser, app: App, msisdn: str = "", user_ref: str = "", reason: str) -> PlayerBlock:
    """Block a number (E.164) or a user_ref for `app`, with the reason; recorded in the staff log."""
    player = Player(app=app, msisdn=msisdn, user_ref="" if msisdn else user_ref)
    try:
        with transaction.atomic():
            block = PlayerBlock.objects.create(
                app=app, msisdn=player.msisdn, user_ref=player.user_ref, reason=reason, blocked_by=staff_actor(user)
            )
            record_staff_action(
                user=user, action="block_player", target=player, reason=reason, outcome=f"{_described(player)} blocked"
            )
    except IntegrityError as error:
        raise AlreadyBlocked(f"The {_described(player)} is already blocked for {app.name}.") from error
    return block


def unblock_player(*, user: AbstractBaseUser, block: PlayerBlock, reason: str) -> None:
    """Lift a block, with the reason; recorded in the staff log."""
    player = Player(app=block.app, msisdn=block.msisdn, user_ref=block.user_ref)
    with transaction.atomic():
        block.delete()
        record_staff_action(
            user=user, action="unblock_player", target=player, reason=reason, outcome=f"{_described(player)} unblocked"
        )


# Every payment request asks it: written once, as the ORM's building of the query per request cost more CPU
# than PostgreSQL's answer. A block names a number or a user_ref, the other one empty.
_BLOCKED = (
    "SELECT EXISTS (SELECT 1 FROM payments_playerblock "
    "WHERE app_id = %s AND (msisdn = %s OR (user_ref <> '' AND user_ref = %s)))"
)


def ensure_player_may_pay(*, app: App, msisdn: str, user_ref: str) -> None:
    """Raise PlayerBlocked when `app` has blocked this number or this user."""
    with connection.cursor() as cursor:
        cursor.execute(_BLOCKED, [app.pk, msisdn, user_ref])
        blocked = cursor.fetchone() == (True,)
    if blocked:
        raise PlayerBlocked("The app has blocked this player; no payment can be made for them.")
