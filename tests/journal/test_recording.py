"""What the journal records, and what it never records."""

import json
from pathlib import Path
from typing import Any

import pytest

from journal.models import JournalRecord
from journal.services import build, record
from journal.spool import Spool
from journal.store import JournalQuery, SqlJournalStore, journal_store
from journal.tasks import drain_journal_spool
from playpay.redaction import msisdn_hash, redact
from tests.conftest import MSISDN, Shop, StaffClient
from tests.deploy.processes import wait_for

pytestmark = pytest.mark.django_db


def test_redaction_leaves_ids_whose_groups_happen_to_be_all_digits() -> None:
    payment_id = "12345678-9abc-4def-8123-456789012345"
    text = f"payment {payment_id} for +447400123456 (tel:447400123456), request 0a1b2c3d4e5f60718293"
    assert redact(text) == f"payment {payment_id} for +44740*****56 (tel:+44740*****56), request 0a1b2c3d4e5f60718293"


def test_redaction_removes_secrets_and_masks_numbers_everywhere() -> None:
    cleaned = redact(
        {
            "Authorization": "Api-Key pp_abc_secret",
            "body": {"pin": "123456", "msisdn": "+447400123456", "note": "call tel:+447400123456 now"},
            "credentials": {"client_secret": "x"},
            "list": [{"X-Signature": "v1=abc"}],
        }
    )
    text = json.dumps(cleaned)
    for secret in ("pp_abc_secret", "123456", "v1=abc", "+447400123456"):
        assert secret not in text
    assert cleaned["credentials"] == "[removed]"
    assert cleaned["body"]["msisdn"] == "+44740*****56"
    assert "tel:+44740*****56" in cleaned["body"]["note"]


def test_a_payments_whole_life_is_in_the_journal_without_any_secret(shop: Shop, staff_client: StaffClient) -> None:
    payment_id = shop.pay()["id"]
    shop.confirm(payment_id, "1234")
    with shop.after_commit(execute=True):
        shop.client.post(
            f"/api/v1/payments/{payment_id}/refunds/",
            {"amount_minor": 10, "reason": "goodwill"},
            format="json",
            HTTP_IDEMPOTENCY_KEY="refund-1",
        )
    admin = staff_client("operations")
    with shop.after_commit(execute=True):
        admin.post(
            "/admin/payments/payment/",
            {
                "action": "refund",
                "_selected_action": [shop.app.payments.get().pk],
                "confirm": "yes",
                "reason_code": "goodwill",
                "note": "rest",
            },
        )

    documents = journal_store().query(JournalQuery(correlation={"payment_id": payment_id}, limit=100))
    kinds = [d["kind"] for d in documents]
    assert kinds.count("api_request") >= 4  # create, get, confirm, refund
    operations = {d["data"]["operation"] for d in documents if d["kind"] == "carrier_call"}
    assert {"send_pin", "verify_pin", "charge"} <= operations
    assert "staff_action" in kinds
    create = next(d for d in reversed(documents) if d["kind"] == "api_request" and d["data"]["method"] == "POST")
    assert create["data"]["status"] == 201
    assert create["data"]["idempotency_key"] == "key-1"
    assert create["correlation"]["app"] == shop.app.name
    assert create["correlation"]["msisdn_hash"] == msisdn_hash(MSISDN)
    everything = json.dumps(list(JournalRecord.objects.values_list("document", flat=True)))
    for secret in (shop.key, MSISDN, '"1234"'):
        assert secret not in everything, secret


def test_callbacks_are_recorded_with_their_verdict(shop: Shop) -> None:
    shop.client.post(
        f"/api/v1/carriers/{shop.carrier.slug}/notifications/", data=b"{}", content_type="application/json"
    )
    callback = journal_store().query(JournalQuery(kind="carrier_callback"))[0]
    assert callback["correlation"]["carrier"] == shop.carrier.slug
    assert callback["data"]["status"] == 400  # the sandbox sends no notifications: rejected, nothing changed


def _spooled(directory: Path) -> list[str]:
    return [
        json.loads(line)["correlation"]["request_id"]
        for segment in sorted(directory.glob("*.jsonl"))
        for line in segment.read_text().splitlines()
    ]


# Transactional: the drainer thread writes to the journal on a connection of its own.
@pytest.mark.journal
@pytest.mark.django_db(transaction=True)
def test_while_the_store_fails_records_wait_on_disk_and_reach_it_once_in_order(monkeypatch: Any, settings: Any) -> None:
    def broken(self: Any, documents: Any) -> None:
        raise ConnectionError("journal database down")

    monkeypatch.setattr(SqlJournalStore, "write", broken)
    record("api_request", {"endpoint": "/api/v1/payments/"}, app="game", request_id="first")
    record("api_request", {"endpoint": "/api/v1/payments/"}, app="game", request_id="second")
    assert _spooled(settings.JOURNAL_SPOOL_DIR) == ["first", "second"]
    monkeypatch.undo()
    wait_for("the drainer to empty the spool", lambda: not _spooled(settings.JOURNAL_SPOOL_DIR), timeout=30)
    record("api_request", {"endpoint": "/api/v1/payments/"}, app="game", request_id="third")  # straight in
    assert not _spooled(settings.JOURNAL_SPOOL_DIR)
    stored = JournalRecord.objects.order_by("id").values_list("request_id", flat=True)
    assert list(stored) == ["first", "second", "third"]


def test_the_periodic_job_drains_what_a_process_that_died_left(settings: Any) -> None:
    Spool(settings.JOURNAL_SPOOL_DIR).append([build("api_request", {"endpoint": "/x"}, app="game", request_id="left")])
    assert drain_journal_spool() == 1
    assert journal_store().query(JournalQuery(correlation={"request_id": "left"}))[0]["data"]["endpoint"] == "/x"
    assert not _spooled(settings.JOURNAL_SPOOL_DIR)


def test_support_sees_a_payments_timeline_on_its_page(shop: Shop, staff_client: StaffClient) -> None:
    payment_id = shop.pay(user_ref="player-9")["id"]
    pk = shop.app.payments.get().pk
    page = staff_client("support").get(f"/admin/payments/payment/{pk}/change/").content.decode()
    assert "interaction timeline" in page.lower()
    assert "POST /api/v1/payments/ → 201" in page
    assert "send_pin → pin_sent" in page
    assert payment_id in page


def test_support_finds_a_players_and_a_numbers_timeline(shop: Shop, staff_client: StaffClient) -> None:
    shop.pay(user_ref="player-9")
    shop.pay(key="key-2", user_ref="player-9")
    support = staff_client("support")
    by_player = support.get("/admin/payments/payment/timeline/", {"app": shop.app.name, "user_ref": "player-9"})
    assert "2 interactions" in by_player.content.decode()  # the two creations carry the player
    by_number = support.get("/admin/payments/payment/timeline/", {"msisdn": "447400123456"}).content.decode()
    assert "POST /api/v1/payments/" in by_number
    assert MSISDN not in by_number  # shown masked
