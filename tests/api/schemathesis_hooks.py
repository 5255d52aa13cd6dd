"""Loaded by the schemathesis run (SCHEMATHESIS_HOOKS): what its generation needs to know beyond the schema.

- `msisdn` (PaymentCreate.msisdn): mobile numbers of the test shop's prefix (+4474, tests/conftest.py),
  so that a valid request can create a payment. Invalid numbers still come from the negative phase.
- Bodies are I-JSON (RFC 7493), as the API's description says: no NUL character and no lone UTF-16
  surrogate in any string or key, nested ones included. OpenAPI 3.0 cannot state this of free JSON
  (payment `metadata`, event `properties`), so a valid case that breaks it is not generated as valid;
  negative cases keep it (the API answers them 400 `invalid_json_value`). Query parameters likewise:
  the API refuses a NUL or a lone surrogate in any of them (400 `validation_error`).
"""

import re
from typing import Any

import schemathesis
from hypothesis import strategies as st

schemathesis.openapi.format("msisdn", st.from_regex(r"\A\+4474[0-9]{8}\Z"))

_NOT_IJSON_TEXT = re.compile("[\x00\ud800-\udfff]")


def is_i_json(value: Any) -> bool:
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, str) and _NOT_IJSON_TEXT.search(node):
            return False
        if isinstance(node, dict):
            if any(isinstance(key, str) and _NOT_IJSON_TEXT.search(key) for key in node):
                return False
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return True


@schemathesis.hook
def filter_case(context: Any, case: Any) -> bool:
    meta = getattr(case, "meta", None)
    positive = meta is None or meta.generation.mode.is_positive
    return not positive or (is_i_json(case.body) and is_i_json(case.query))
