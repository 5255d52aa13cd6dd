"""Which payment requests a player block refuses: the blocked number whoever pays with it, the blocked user
on any number, and nothing else."""

import pytest

from payments.models import Payment, PlayerBlock
from tests.conftest import MSISDN, Shop

OTHER_NUMBER = "+447400654321"


@pytest.mark.django_db
def test_a_blocked_number_refuses_every_user_on_it_and_no_other_number(shop: Shop) -> None:
    PlayerBlock.objects.create(app=shop.app, msisdn=MSISDN, reason="fraud", blocked_by="staff:support")
    for key, user_ref in (("k1", "player-1"), ("k2", "someone-else")):
        assert shop.create_payment(key=key, user_ref=user_ref).json()["code"] == "player_blocked"
    assert shop.create_payment(key="k3", user_ref="someone-else", msisdn=OTHER_NUMBER).status_code == 201
    assert Payment.objects.count() == 1


@pytest.mark.django_db
def test_a_blocked_user_is_refused_on_any_number_and_other_users_are_not(shop: Shop) -> None:
    PlayerBlock.objects.create(app=shop.app, user_ref="cheater", reason="abuse", blocked_by="staff:support")
    for key, msisdn in (("k1", MSISDN), ("k2", OTHER_NUMBER)):
        assert shop.create_payment(key=key, user_ref="cheater", msisdn=msisdn).json()["code"] == "player_blocked"
    assert shop.create_payment(key="k3", user_ref="honest").status_code == 201
    assert Payment.objects.count() == 1
