"""The payment state machine: only allowed transitions, each recorded."""

import pytest
from django.db import transaction
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.django import TestCase

from payments.errors import IllegalTransition
from payments.models import Payment, PaymentFlow, PaymentStatus
from payments.services.state_machine import FINAL_STATUSES, TRANSITIONS, can_transition, transition
from tests.factories import PaymentFactory


def make_payment() -> Payment:
    return PaymentFactory.create(flow=PaymentFlow.PIN)


def test_every_status_has_a_rule_and_final_states_have_no_exit() -> None:
    assert set(TRANSITIONS) == set(PaymentStatus.values)
    assert {PaymentStatus.FAILED, PaymentStatus.EXPIRED, PaymentStatus.REFUNDED, PaymentStatus.REVERSED} == set(
        FINAL_STATUSES
    )
    assert not can_transition(PaymentStatus.CREATED, PaymentStatus.SUCCEEDED)
    assert not can_transition(PaymentStatus.FAILED, PaymentStatus.SUCCEEDED)


@pytest.mark.django_db(transaction=True)
def test_transition_outside_a_transaction_is_refused() -> None:
    payment = make_payment()
    with pytest.raises(RuntimeError, match=r"transaction\.atomic"):
        transition(payment, PaymentStatus.PIN_SENT, actor="system")


class TestRandomWalks(TestCase):
    @settings(max_examples=60, deadline=None)
    @given(st.lists(st.sampled_from(PaymentStatus.values), max_size=12))
    def test_any_sequence_applies_only_allowed_moves_and_records_each(self, targets: list[str]) -> None:
        payment = make_payment()
        expected = [("", "created")]
        payment.history.create(from_status="", to_status="created", actor="test")
        for target in targets:
            before = payment.status
            with transaction.atomic():
                if can_transition(before, target):
                    transition(payment, target, actor="test", reason="walk")
                    expected.append((before, target))
                else:
                    with pytest.raises(IllegalTransition):
                        transition(payment, target, actor="test")
            payment.refresh_from_db()
            assert payment.status == expected[-1][1]
        assert list(payment.history.values_list("from_status", "to_status")) == expected
