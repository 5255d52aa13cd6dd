"""The admin of configuration (carriers, price points, routing, apps, API keys, roles): every change through it
needs a reason, kept with its before/after history (django-simple-history) and in the staff log."""

from functools import cache
from typing import Any

from django import forms
from django.contrib import messages
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import PermissionDenied
from django.db.models import Model
from django.http import HttpRequest, HttpResponse
from simple_history.admin import SimpleHistoryAdmin
from unfold.forms import ActionForm
from unfold.widgets import UnfoldAdminTextInputWidget

from journal.services import record_staff_action
from playpay.admin_base import ModelAdmin

REASON = "change_reason"
REASON_LABEL = "Reason for this change"
REASON_HELP = "Required. Kept with the change in its history and in the staff actions."
REASON_MISSING = "Give a reason for this change: it is kept with the change for whoever reads the history."
# simple-history's own column is 100 characters.
REASON_MAX_LENGTH = 100


def _reason_field() -> forms.CharField:
    return forms.CharField(
        label=REASON_LABEL,
        max_length=REASON_MAX_LENGTH,
        help_text=REASON_HELP,
        error_messages={"required": REASON_MISSING},
        widget=UnfoldAdminTextInputWidget(attrs={"placeholder": "e.g. carrier asked to pause billing (ticket 4821)"}),
    )


@cache
def form_with_reason(form: type[forms.ModelForm[Any]]) -> type[forms.ModelForm[Any]]:
    """The model's admin form plus the required reason (a form field, not a model field)."""
    return type(form.__name__, (form,), {REASON: _reason_field()})


class ReasonActionForm(ActionForm):  # type: ignore[misc]  # unfold is untyped
    """The list's action bar with a reason box: an action that changes configuration needs one."""

    reason = forms.CharField(
        required=False,
        label="",
        max_length=REASON_MAX_LENGTH,
        widget=UnfoldAdminTextInputWidget(attrs={"placeholder": REASON_LABEL, "aria-label": REASON_LABEL}),
    )


def staff(request: HttpRequest) -> AbstractBaseUser:
    user = request.user
    assert isinstance(user, AbstractBaseUser)  # the admin requires a signed-in user
    return user


class AuditedAdmin(SimpleHistoryAdmin, ModelAdmin):  # type: ignore[misc,type-arg]  # simple-history is untyped
    """A configuration model's admin: reason required on every add, change and delete (and on the actions that
    change it, through `action_reason`), history per object with who, when, why and before → after."""

    action_form = ReasonActionForm

    def history_form_view(
        self, request: HttpRequest, object_id: str, version_id: str, extra_context: Any = None
    ) -> HttpResponse:
        # An old version is shown, never saved back: simple-history's form would save it whatever
        # SIMPLE_HISTORY_REVERT_DISABLED says, around the services (a revoked API key active again).
        if request.method != "GET":
            raise PermissionDenied
        response: HttpResponse = super().history_form_view(request, object_id, version_id, extra_context)
        return response

    def get_actions(self, request: HttpRequest) -> Any:
        # Django's "delete selected" deletes with no reason and no staff-log line: one at a time from the
        # delete page instead, which asks for both.
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)
        return actions

    def get_form(self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any) -> Any:
        kwargs["form"] = form_with_reason(kwargs.get("form", self.form))
        return super().get_form(request, obj, change=change, **kwargs)

    def get_fieldsets(self, request: HttpRequest, obj: Any = None) -> Any:
        fieldsets = [
            (name, {**options, "fields": [f for f in options["fields"] if f != REASON]})
            for name, options in super().get_fieldsets(request, obj)
        ]
        if not self.has_change_permission(request, obj):
            return fieldsets  # a read-only page: nothing to give a reason for
        return [*fieldsets, (REASON_LABEL, {"fields": [REASON]})]

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        obj._change_reason = form.cleaned_data[REASON]
        super().save_model(request, obj, form, change)
        self.record(
            request, obj, "change" if change else "add", form.cleaned_data[REASON], ", ".join(self.changed_fields(form))
        )

    def changed_fields(self, form: Any) -> list[str]:
        """What the staff log says changed (the history has the values)."""
        return sorted(set(form.changed_data) - {REASON})

    def save_formset(self, request: HttpRequest, form: Any, formset: Any, change: bool) -> None:
        reason = form.cleaned_data.get(REASON, "")
        for inline_form in formset.forms:
            inline_form.instance._change_reason = reason
        super().save_formset(request, form, formset, change)
        for obj in formset.new_objects:
            self.record(request, obj, "add", reason, "")
        for obj, changed in formset.changed_objects:
            self.record(request, obj, "change", reason, ", ".join(sorted(changed)))
        for obj in formset.deleted_objects:
            self.record(request, obj, "delete", reason, "")

    def delete_model(self, request: HttpRequest, obj: Any) -> None:
        # The delete confirmation page has no reason box: the history says where the deletion came from.
        reason = "deleted in the admin"
        obj._change_reason = reason
        self.record(request, obj, "delete", reason, "")
        super().delete_model(request, obj)

    def record(self, request: HttpRequest, obj: Model, action: str, reason: str, outcome: str) -> None:
        record_staff_action(user=staff(request), action=action, target=obj, reason=reason, outcome=outcome[:255])

    def action_reason(self, request: HttpRequest) -> str | None:
        """The reason typed beside the action; None (and a message saying what is missing) when there is none."""
        reason = request.POST.get("reason", "").strip()
        if not reason:
            self.message_user(request, REASON_MISSING + " Type it in the box beside the action.", messages.ERROR)
            return None
        return reason[:REASON_MAX_LENGTH]
