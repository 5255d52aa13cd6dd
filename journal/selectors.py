"""Reads of the journal for support staff: a payment's or a player's timeline, newest first."""

import json
from typing import Any

from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from journal.store import JournalQuery, journal_store
from playpay.redaction import msisdn_hash


def timeline(
    *,
    msisdn: str = "",
    payment_id: str = "",
    carrier_reference: str = "",
    app: str = "",
    user_ref: str = "",
    limit: int = 200,
) -> list[dict[str, Any]]:
    """Documents matching all the given ids (an MSISDN is searched by its keyed hash), newest first."""
    given = {"payment_id": payment_id, "carrier_reference": carrier_reference, "app": app, "user_ref": user_ref}
    ids = {name: value for name, value in given.items() if value}
    if msisdn:
        ids["msisdn_hash"] = msisdn_hash(msisdn)
    if not ids:
        return []
    return journal_store().query(JournalQuery(correlation=ids, limit=limit))


def summary(document: dict[str, Any]) -> str:
    data = document.get("data", {})
    kind = document.get("kind")
    if kind in ("api_request", "carrier_callback"):
        return f"{data.get('method')} {data.get('endpoint')} → {data.get('status')} ({data.get('latency_ms')} ms)"
    if kind == "carrier_call":
        result = data.get("result", {})
        error = f" {result.get('error_code')}" if result.get("error_code") else ""
        return f"{data.get('operation')} → {result.get('outcome')}{error} ({data.get('latency_ms')} ms)"
    if kind in ("webhook", "app_notification"):
        return f"{data.get('event')} attempt {data.get('attempt')} → {data.get('status') or data.get('error')}"
    if kind == "staff_action":
        return f"{data.get('user')}: {data.get('action')} — {data.get('reason')} → {data.get('outcome')}"
    return str(kind)


def render(documents: list[dict[str, Any]]) -> SafeString:
    """An HTML table of documents, each with its full JSON behind a disclosure."""
    if not documents:
        return format_html("{}", "no interactions recorded")
    rows = format_html_join(
        "",
        "<tr><td>{}</td><td>{}</td><td>{}<details><summary>document</summary><pre>{}</pre></details></td></tr>",
        (
            (doc["occurred_at"][:23].replace("T", " "), doc["kind"], summary(doc), json.dumps(doc, indent=2))
            for doc in documents
        ),
    )
    return format_html("<table><thead><tr><th>when (UTC)</th><th>kind</th><th>what</th></tr></thead>{}</table>", rows)
