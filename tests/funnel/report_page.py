"""The admin's funnel report page cut short by its time bound (FUNNEL_REPORT_TIMEOUT_MS), whichever store
counts the events."""

from typing import Any

from django.test import Client


def page_cut_short(client: Client, url: str, params: dict[str, str], settings: Any, *, journeys: int) -> str:
    """The page read within its bound (it shows the period's journeys), then with a bound of a millisecond,
    which no report meets: still a page (200) without the report, saying why; its text."""
    assert f"{journeys} journeys" in client.get(url, params).content.decode()
    settings.FUNNEL_REPORT_TIMEOUT_MS = 1
    response = client.get(url, params)
    assert response.status_code == 200
    page = response.content.decode()
    assert "take too long to count here" in page
    assert f"{journeys} journeys" not in page
    return page
