"""unfold's change lists, made to work out once per page what unfold (0.91) works out again for every row.

unfold builds each row's cells with `items_for_result`, which computes all the column headers again for every
row (each column's label, three sort links per sortable column, the select-all checkbox rendered through the
form template engine) only to read their labels, and renders every status badge through two templates. At 50
rows a page that was half of the payment list's time. `install()`, called once when the admin starts, keeps
the markup exactly as unfold writes it: the headers are computed once per list, a badge once per text and
colour. The row checkboxes are in `playpay.admin_base.ModelAdmin`.
"""

from collections.abc import Callable, Iterator
from functools import lru_cache
from typing import Any

from unfold.templatetags import unfold_list

_HEADERS = "_playpay_result_headers"

# unfold's own functions, as install() found them (the tests render a page with both and compare).
original_result_headers: Callable[[Any], Iterator[dict[str, Any]]] | None = None
original_display_for_label: Callable[[Any, Any, Any], str] | None = None


def install() -> None:
    """Replace the two module functions unfold's list rendering calls per row with their once-per-page forms."""
    global original_result_headers, original_display_for_label
    if getattr(unfold_list, "_playpay_installed", False):
        return
    compute_headers: Callable[[Any], Iterator[dict[str, Any]]] = unfold_list.result_headers
    render_label: Callable[[Any, Any, Any], str] = unfold_list.display_for_label
    original_result_headers, original_display_for_label = compute_headers, render_label

    def result_headers(cl: Any) -> Iterator[dict[str, Any]]:
        # One change list is one page's rendering: its headers do not change between its rows.
        headers = cl.__dict__.get(_HEADERS)
        if headers is None:
            headers = list(compute_headers(cl))
            cl.__dict__[_HEADERS] = headers
        return iter(headers)

    @lru_cache(maxsize=1024)
    def known_label(value: str, tones: tuple[tuple[str, str], ...]) -> str:
        return render_label(value, "", dict(tones))

    def display_for_label(value: Any, empty_value_display: Any, label: Any) -> str:
        # A badge depends on its text and colour only (unfold's template writes "-" for an empty one): those of
        # non-empty plain texts (statuses) are kept.
        if type(value) is str and value and isinstance(label, dict):
            tones = tuple(sorted((str(key), str(tone)) for key, tone in label.items()))
            return known_label(value, tones)
        return render_label(value, empty_value_display, label)

    unfold_list.result_headers = result_headers
    unfold_list.display_for_label = display_for_label
    unfold_list._playpay_installed = True
