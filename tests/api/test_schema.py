"""What the OpenAPI schema states, and the answers it was made to state."""

from typing import Any

import pytest
from drf_spectacular.generators import SchemaGenerator

from tests.conftest import Shop, assert_problem

pytestmark = pytest.mark.django_db

URL = "/api/v1/funnel/events/"


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    generated: dict[str, Any] = SchemaGenerator().get_schema(request=None, public=True)
    return generated


def operations(schema: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(method, path, op) for path, ops in schema["paths"].items() for method, op in ops.items()]


def test_every_error_response_is_a_problem_document(schema: dict[str, Any]) -> None:
    for method, path, operation in operations(schema):
        for code, response in operation["responses"].items():
            if int(code) >= 400:
                assert response["content"] == {
                    "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
                }, (method, path, code)


def test_operations_document_401_and_429_with_an_api_key_406_and_503_always_and_415_with_a_body(
    schema: dict[str, Any],
) -> None:
    for method, path, operation in operations(schema):
        statuses = set(operation["responses"])
        assert "503" in statuses, (method, path)
        assert "406" in statuses, (method, path)
        if "requestBody" in operation:
            assert "415" in statuses, (method, path)
        if operation.get("security") == [{"ApiKey": []}]:
            assert {"401", "429"} <= statuses, (method, path)


def test_components_describe_the_api_not_the_code_that_serves_it(schema: dict[str, Any]) -> None:
    for name, component in schema["components"]["schemas"].items():
        assert not component.get("description", "").startswith(("For input serializers", "For output-only")), name


def test_request_bodies_are_closed_and_required(schema: dict[str, Any]) -> None:
    create = schema["components"]["schemas"]["PaymentCreateRequest"]
    assert create["additionalProperties"] is False
    for method, path, operation in operations(schema):
        if "requestBody" in operation:
            assert operation["requestBody"]["required"] is True, (method, path)


def test_a_funnel_post_without_a_body_is_refused(shop: Shop) -> None:
    assert_problem(shop.client.post(URL), status=400, code="malformed_request")


def test_a_funnel_post_whose_body_is_not_an_object_is_refused(shop: Shop) -> None:
    response = shop.client.post(URL, data="[1, 2]", content_type="application/json")
    assert_problem(response, status=400, code="validation_error")


def test_a_country_that_is_not_two_ascii_letters_is_refused(shop: Shop) -> None:
    assert_problem(shop.client.get("/api/v1/price-points/", {"country": "éé"}), status=400, code="validation_error")
    assert shop.client.get("/api/v1/price-points/", {"country": "gb"}).status_code == 200


def test_an_accept_header_without_json_is_answered_406(shop: Shop) -> None:
    response = shop.client.get("/api/v1/price-points/", HTTP_ACCEPT="text/html")
    assert_problem(response, status=406, code="not_acceptable")


def test_a_body_that_is_not_json_is_answered_415(shop: Shop) -> None:
    response = shop.client.post(URL, data="a=1", content_type="text/plain")
    assert_problem(response, status=415, code="unsupported_media_type")


def test_the_subscription_rules_are_in_the_schema(schema: dict[str, Any]) -> None:
    create = schema["paths"]["/api/v1/subscriptions/"]["post"]
    assert "spending_cap_reached" in create["responses"]["422"]["description"]
    stop = schema["paths"]["/api/v1/subscriptions/stop/"]["post"]
    assert {"200", "400"} <= set(stop["responses"])
    assert stop["requestBody"]["required"] is True
