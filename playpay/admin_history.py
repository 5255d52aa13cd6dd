"""The admin's "Configuration changes" page: the before/after history of every model that keeps one
(django-simple-history), newest first, in one list filterable by model and by person."""

from itertools import islice
from typing import Any

from django.apps import apps
from django.contrib import admin
from django.db.models import Model
from django.http import HttpRequest
from django.template.response import TemplateResponse
from django.urls import NoReverseMatch, reverse
from django.utils.text import capfirst
from simple_history.template_utils import HistoricalRecordContextHelper

# The newest changes shown; older ones are on each object's own history page.
LIMIT = 200


def history_models(request: HttpRequest) -> dict[str, type[Model]]:
    """The models with a history that this person may view, by label ("carriers.carrier")."""
    found = {}
    for history_model in apps.get_models():
        model = getattr(history_model, "instance_type", None)
        if model is None or not any(f.name == "history_date" for f in history_model._meta.fields):
            continue  # not a history, or the history of a many-to-many table (shown with its owner's)
        model_admin = admin.site._registry.get(model)
        if model_admin is not None and model_admin.has_view_or_change_permission(request):
            found[model._meta.label_lower] = model
    return found


def _changes(record: Any, model: type[Model]) -> list[dict[str, Any]]:
    previous = record.prev_record
    if previous is None:
        return []
    delta = record.diff_against(previous, foreign_keys_are_objs=True)
    changes: list[dict[str, Any]] = HistoricalRecordContextHelper(model, record).context_for_delta_changes(delta)
    return changes


def _object_link(model: type[Model], object_id: Any, page: str) -> str:
    """The admin's `page` ("change", "history") of the object; empty when the model has no admin."""
    try:
        return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_{page}", args=[object_id])
    except NoReverseMatch:
        return ""


def configuration_changes_view(request: HttpRequest) -> TemplateResponse:
    models = history_models(request)
    chosen = request.GET.get("model", "")
    user = request.GET.get("user", "").strip()
    records: list[tuple[Any, type[Model]]] = []
    for label, model in models.items():
        if chosen and label != chosen:
            continue
        history = model.history.select_related("history_user")  # type: ignore[attr-defined]
        if user:
            history = history.filter(history_user__username=user)
        records.extend((record, model) for record in history.order_by("-history_date")[:LIMIT])
    records.sort(key=lambda pair: pair[0].history_date, reverse=True)
    rows = [
        {
            "when": record.history_date,
            "model": capfirst(model._meta.verbose_name),
            "object": str(record.instance),
            # A deleted object has no page left; its history is still listed here.
            "link": _object_link(model, record.history_object.pk, "change") if record.history_type != "-" else "",
            "history_link": _object_link(model, record.history_object.pk, "history")
            if record.history_type != "-"
            else "",
            "kind": record.get_history_type_display(),
            "user": record.history_user,
            "reason": record.history_change_reason or "",
            "changes": _changes(record, model),
        }
        for record, model in islice(records, LIMIT)
    ]
    context = {
        **admin.site.each_context(request),
        "title": "Configuration changes",
        "rows": rows,
        "models": sorted(((label, capfirst(m._meta.verbose_name_plural)) for label, m in models.items()), key=str),
        "chosen": chosen,
        "user_filter": user,
        "limit": LIMIT,
    }
    return TemplateResponse(request, "admin/configuration_changes.html", context)
