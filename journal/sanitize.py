"""Makes any document storable by every journal backend, without dropping the record.

PostgreSQL's JSONB (and its text columns) refuse the NUL character and lone UTF-16 surrogates,
JSON has no NaN or Infinity, and a document nested a thousand levels deep exhausts the
recursion of whatever walks it. `sanitize` returns a copy where each such value is replaced by
a readable stand-in (`"\\u0000"` as those six characters, a non-finite number as its name,
anything nested deeper than `MAX_DEPTH` or longer than `MAX_STRING` cut with a note, at most
`MAX_ITEMS` members kept per object or array) and says whether it changed anything; the caller
(journal.services.build, which every backend and the spool get their documents from) marks the
document `"_sanitized": true`.
"""

import math
from typing import Any

from playpay.storable import MAX_JSON_DEPTH, escape_unstorable, has_unstorable_text

MAX_DEPTH = MAX_JSON_DEPTH
MAX_STRING = 16_384
MAX_ITEMS = 1_000  # per object or array


def _text(value: str) -> tuple[str, bool]:
    changed = False
    if len(value) > MAX_STRING:
        value, changed = f"{value[:MAX_STRING]}…[{len(value) - MAX_STRING} characters cut]", True
    if has_unstorable_text(value):
        value, changed = escape_unstorable(value), True
    return value, changed


def sanitize(value: Any) -> tuple[Any, bool]:
    """A storable copy of `value` and whether anything had to be escaped, replaced or cut."""
    changed = False

    def walk(node: Any, depth: int) -> Any:
        nonlocal changed
        if isinstance(node, str):
            text, cut = _text(node)
            changed = changed or cut
            return text
        if isinstance(node, bool) or node is None or isinstance(node, int):
            return node
        if isinstance(node, float):
            if math.isfinite(node):
                return node
            changed = True
            return repr(node)  # "nan", "inf", "-inf"
        if isinstance(node, dict | list | tuple):
            if depth >= MAX_DEPTH:
                changed = True
                return f"[nested deeper than {MAX_DEPTH} levels: cut]"
            items = list(node.items()) if isinstance(node, dict) else list(enumerate(node))
            if len(items) > MAX_ITEMS:
                changed = True
                items = items[:MAX_ITEMS]
            if isinstance(node, dict):
                out: dict[str, Any] = {}
                for key, item in items:
                    name, cut = _text(key if isinstance(key, str) else str(key))
                    changed = changed or cut or not isinstance(key, str)
                    out[name] = walk(item, depth + 1)
                return out
            return [walk(item, depth + 1) for _, item in items]
        return node  # UUIDs, decimals, times: the store's JSON encoder writes them

    return walk(value, 0), changed
