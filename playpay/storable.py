"""What a JSON value may hold to be stored: the one rule shared by the API's parser and the journal.

PostgreSQL's JSONB (and its text columns) refuse the NUL character and lone UTF-16 surrogates; JSON
has no NaN or Infinity; nesting is bounded so that whatever walks a document never runs out of stack.
"""

import re

MAX_JSON_DEPTH = 32

_UNSTORABLE = re.compile("[\\x00\\ud800-\\udfff]")


def has_unstorable_text(text: str) -> bool:
    return _UNSTORABLE.search(text) is not None


def escape_unstorable(text: str) -> str:
    """`text` with each NUL or lone surrogate written as its six-character `\\uXXXX` escape."""
    return _UNSTORABLE.sub(lambda match: f"\\u{ord(match.group()):04x}", text)
