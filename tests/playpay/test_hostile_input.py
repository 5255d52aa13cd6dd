"""No input turns into a 500: what the API cannot accept is a 400/413 problem, nothing is stored,
and the journal still keeps a (sanitized, marked) record of the request."""

import json
import time
from typing import Any

import pytest

from carriers.adapters.aggregator import sign
from journal.store import JournalQuery, journal_store
from payments.models import CarrierNotification, Payment, Refund
from playpay.storable import MAX_JSON_DEPTH
from tests.conftest import MSISDN, Shop, assert_problem
from tests.payments.carrier_helpers import simulated_carrier

pytestmark = pytest.mark.django_db
PAYMENTS = "/api/v1/payments/"


def post_raw(shop: Shop, url: str, text: str, key: str = "key-1") -> Any:
    """POST a JSON text as it is (escapes such as \\u0000 stay escapes on the wire)."""
    with shop.after_commit(execute=True):
        return shop.client.post(url, data=text, content_type="application/json", HTTP_IDEMPOTENCY_KEY=key)


def payment_text(**fields: str) -> str:
    """A payment request whose fields are given as raw JSON value texts."""
    body = {"user_ref": '"player-1"', "msisdn": json.dumps(MSISDN), "price_point": '"pp"', **fields}
    return "{" + ", ".join(f'"{name}": {value}' for name, value in body.items()) + "}"


def last_journaled(endpoint: str) -> dict[str, Any]:
    documents = journal_store().query(JournalQuery(kind="api_request", limit=20))
    return next(document for document in documents if document["data"]["endpoint"] == endpoint)


@pytest.mark.parametrize(
    ("field", "value", "pointer"),
    [
        ("user_ref", '"a\\u0000b"', "#/user_ref"),
        ("journey_id", '"j\\ud800"', "#/journey_id"),
        ("msisdn", '"+447400\\u0000123456"', "#/msisdn"),
        ("metadata", '{"level": {"name": "x\\udc00"}}', "#/metadata/level/name"),
        ("metadata", '{"score": NaN}', "#/metadata/score"),
        ("metadata", '{"score": -Infinity}', "#/metadata/score"),
        ("metadata", '{"score": 1e999}', "#/metadata/score"),
        ("metadata", '{"k\\u0000": 1}', "#/metadata"),
    ],
)
def test_nul_lone_surrogates_and_non_finite_numbers_are_a_problem_naming_the_field(
    shop: Shop, field: str, value: str, pointer: str
) -> None:
    response = post_raw(shop, PAYMENTS, payment_text(**{field: value}))
    problem = assert_problem(response, status=400, code="invalid_json_value")
    assert [error["pointer"] for error in problem["errors"]] == [pointer]
    assert not Payment.objects.exists()
    document = last_journaled(PAYMENTS)
    assert document["data"]["status"] == 400
    assert document.get("_sanitized") is True
    assert field in document["data"]["request"]  # kept, with the unstorable value escaped


def test_json_nested_deeper_than_the_limit_is_a_problem_and_is_journaled(shop: Shop) -> None:
    for depth in (MAX_JSON_DEPTH, 1000, 100_000):
        nested = "[" * depth + "]" * depth
        response = post_raw(shop, PAYMENTS, payment_text(metadata=f'{{"a": {nested}}}'))
        assert_problem(response, status=400, code="json_too_deep")
        document = last_journaled(PAYMENTS)
        assert document["data"]["status"] == 400
        # Kept: cut where it nests deeper than the journal holds (and marked), or, too deep for the
        # journal's own parser, as a note of its size (its secrets could not be found in the text).
        request = document["data"]["request"]
        assert document.get("_sanitized") is True or request.startswith("[a JSON body of"), request
    assert not Payment.objects.exists()


def test_confirm_refund_and_reversal_bodies_are_checked_the_same_way(shop: Shop) -> None:
    payment = shop.pay(flow="one_click")
    for action in ("confirm", "refunds", "reversal"):
        url = f"{PAYMENTS}{payment['id']}/{action}/"
        response = post_raw(shop, url, '{"reason": "a\\u0000", "pin": "1234\\ud800"}', key=f"k-{action}")
        assert_problem(response, status=400, code="invalid_json_value")
        assert last_journaled(url).get("_sanitized") is True
    assert not Refund.objects.exists()
    assert shop.get(payment["id"])["status"] == "succeeded"


def test_a_carrier_callback_with_unstorable_text_is_answered_and_journaled(shop: Shop) -> None:
    url = f"/api/v1/carriers/{shop.carrier.slug}/notifications/"
    response = shop.client.post(url, data='{"id": "\\u0000", "x": "\\ud800"}', content_type="application/json")
    assert response.status_code < 500
    documents = journal_store().query(JournalQuery(kind="carrier_callback", limit=5))
    assert documents[0]["_sanitized"] is True
    assert documents[0]["data"]["request"] == {"id": "\\u0000", "x": "\\ud800"}


def test_a_body_over_the_size_limit_is_a_413_problem_and_is_journaled(shop: Shop, settings: Any) -> None:
    too_big = payment_text(metadata=json.dumps({"blob": "x" * settings.MAX_REQUEST_BYTES}))
    response = post_raw(shop, PAYMENTS, too_big)
    problem = assert_problem(response, status=413, code="request_too_large")
    assert str(settings.MAX_REQUEST_BYTES) in problem["detail"]
    assert not Payment.objects.exists()
    document = last_journaled(PAYMENTS)
    assert document["data"]["status"] == 413
    assert "over the request size limit" in document["data"]["request"]


@pytest.mark.parametrize("amount", ['"100"', "100.0", "1e2", "true"])
def test_a_refund_amount_must_be_a_json_integer(shop: Shop, amount: str) -> None:
    payment = shop.pay(flow="one_click")
    url = f"{PAYMENTS}{payment['id']}/refunds/"
    response = post_raw(shop, url, f'{{"reason": "goodwill", "amount_minor": {amount}}}', key="r-1")
    problem = assert_problem(response, status=400, code="validation_error")
    assert [error["pointer"] for error in problem["errors"]] == ["#/amount_minor"]
    assert not Refund.objects.exists()
    assert last_journaled(url)["data"]["status"] == 400


def test_a_refund_amount_given_as_an_integer_is_accepted(shop: Shop) -> None:
    payment = shop.pay(flow="one_click")
    url = f"{PAYMENTS}{payment['id']}/refunds/"
    response = post_raw(shop, url, '{"reason": "goodwill", "amount_minor": 1}', key="r-1")
    assert response.status_code == 201, response.content
    assert Refund.objects.get().amount_minor == 1


def test_letters_in_an_msisdn_are_refused(shop: Shop) -> None:
    response = shop.create_payment(msisdn="+44 7400 ABCDEF")
    assert_problem(response, status=400, code="invalid_msisdn")
    assert not Payment.objects.exists()
    assert last_journaled(PAYMENTS)["data"]["status"] == 400


@pytest.mark.parametrize("url", [PAYMENTS, "/api/v1/price-points/"])
@pytest.mark.parametrize(
    ("query", "name"),
    [
        ("limit=99999999999999999999", "limit"),
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=ten", "limit"),
        ("offset=99999999999999999999", "offset"),
        ("offset=-1", "offset"),
        ("offset=1.5", "offset"),
    ],
)
def test_limit_and_offset_out_of_range_or_not_integers_are_a_problem(
    shop: Shop, url: str, query: str, name: str
) -> None:
    problem = assert_problem(shop.client.get(f"{url}?{query}"), status=400, code="validation_error")
    assert [error["pointer"] for error in problem["errors"]] == [f"#/{name}"]


def test_limit_and_offset_in_range_page_the_list(shop: Shop) -> None:
    body = shop.client.get("/api/v1/price-points/?limit=1000&offset=0").json()
    assert body["count"] == 1
    assert shop.client.get("/api/v1/price-points/?offset=1000000000").json()["results"] == []


def test_the_problems_catalogue_and_the_schema_document_the_new_statuses(shop: Shop) -> None:
    from drf_spectacular.generators import SchemaGenerator

    rows = shop.client.get("/api/problems/").json()["problem_types"]
    codes = {row["code"]: row["status"] for row in rows}
    assert {"invalid_json_value": 400, "json_too_deep": 400, "request_too_large": 413}.items() <= codes.items()
    paths = SchemaGenerator().get_schema(request=None, public=True)["paths"]
    for path, method in (
        ("/api/v1/payments/", "post"),
        ("/api/v1/payments/{id}/confirm/", "post"),
        ("/api/v1/payments/{id}/refunds/", "post"),
        ("/api/v1/payments/{id}/reversal/", "post"),
        ("/api/v1/funnel/events/", "post"),
    ):
        assert {"400", "413"} <= set(paths[path][method]["responses"]), (path, method)
    for path in ("/api/v1/payments/", "/api/v1/price-points/"):
        assert "400" in paths[path]["get"]["responses"], path


def test_ordinary_json_is_stored_as_given(shop: Shop) -> None:
    """The strict parser keeps ordinary JSON as it was (numbers, nesting within the limit, unicode)."""
    metadata = {"price": 1.5, "deep": {"a": [{"b": "é ✓ 😀"}]}, "big": 10**30}
    response = shop.create_payment(metadata=metadata)
    assert response.status_code == 201, response.content
    assert Payment.objects.get().metadata == metadata


@pytest.mark.parametrize(
    ("url", "name"),
    [
        ("/api/v1/payments/?user_ref=a%00b", "user_ref"),
        ("/api/v1/payments/?status=%00", "status"),
        ("/api/v1/price-points/?carrier=a%00b", "carrier"),
        ("/api/v1/price-points/?country=G%00", "country"),
    ],
)
def test_a_nul_character_in_a_query_parameter_is_a_problem_naming_it(shop: Shop, url: str, name: str) -> None:
    problem = assert_problem(shop.client.get(url), status=400, code="validation_error")
    assert [error["pointer"] for error in problem["errors"]] == [f"#/{name}"]
    document = last_journaled(url.split("?")[0])
    assert document["data"]["status"] == 400


def test_a_signed_carrier_callback_with_unstorable_ids_is_refused_and_changes_nothing(shop: Shop) -> None:
    carrier = simulated_carrier("http://127.0.0.1:9", "aggregator", prefix="4478")
    event = {"event_id": "evt_\u0000", "type": "charge.succeeded", "created": int(time.time()), "data": {}}
    body = json.dumps(event).encode()
    timestamp = str(int(time.time()))
    secret = carrier.credentials["callback_secret"]
    response = shop.client.post(
        f"/api/v1/carriers/{carrier.slug}/notifications/",
        data=body,
        content_type="application/json",
        HTTP_X_TIMESTAMP=timestamp,
        HTTP_X_SIGNATURE=sign(secret, timestamp, body),
    )
    assert_problem(response, status=400, code="notification_rejected")
    assert not CarrierNotification.objects.exists()
