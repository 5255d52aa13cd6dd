"""The admins other packages register (staff, sign-in devices and lockouts, the scheduler), on the admin's
unfold classes so that every page looks and behaves alike. Roles (groups) are in journal/admin.py: their
changes need a reason and keep a history."""

from typing import Any

from axes.admin import AccessAttemptAdmin, AccessFailureLogAdmin, AccessLogAdmin
from axes.models import AccessAttempt, AccessFailureLog, AccessLog
from django.contrib import admin
from django.contrib.auth.admin import UserAdmin as BaseUserAdmin
from django.contrib.auth.models import User
from django_celery_beat.admin import ClockedScheduleAdmin as BaseClockedScheduleAdmin
from django_celery_beat.admin import CrontabScheduleAdmin as BaseCrontabScheduleAdmin
from django_celery_beat.admin import PeriodicTaskAdmin as BasePeriodicTaskAdmin
from django_celery_beat.admin import PeriodicTaskForm, TaskSelectWidget
from django_celery_beat.models import (
    ClockedSchedule,
    CrontabSchedule,
    IntervalSchedule,
    PeriodicTask,
    SolarSchedule,
)
from django_otp.plugins.otp_totp.admin import TOTPDeviceAdmin as BaseTOTPDeviceAdmin
from django_otp.plugins.otp_totp.models import TOTPDevice
from unfold.forms import AdminPasswordChangeForm, UserChangeForm, UserCreationForm
from unfold.widgets import UnfoldAdminSelectWidget, UnfoldAdminTextInputWidget

from playpay.admin_base import ModelAdmin, TabularInline

_LOCKOUT_MODELS = (AccessAttempt, AccessLog, AccessFailureLog)  # registered unless AXES_ENABLE_ADMIN is off
_LOCKOUT_ADMIN = admin.site.is_registered(AccessAttempt)
for _model in (
    User,
    TOTPDevice,
    *(_LOCKOUT_MODELS if _LOCKOUT_ADMIN else ()),
    PeriodicTask,
    IntervalSchedule,
    CrontabSchedule,
    SolarSchedule,
    ClockedSchedule,
):
    admin.site.unregister(_model)


@admin.register(User)
class UserAdmin(BaseUserAdmin, ModelAdmin):  # type: ignore[type-arg]
    form = UserChangeForm
    add_form = UserCreationForm
    change_password_form = AdminPasswordChangeForm


@admin.register(TOTPDevice)
class TOTPDeviceAdmin(BaseTOTPDeviceAdmin, ModelAdmin[TOTPDevice]):  # type: ignore[misc]  # django-otp is untyped
    pass


class UnfoldAccessAttemptAdmin(AccessAttemptAdmin, ModelAdmin[AccessAttempt]):  # type: ignore[misc]  # django-axes is untyped
    pass


class UnfoldAccessLogAdmin(AccessLogAdmin, ModelAdmin[AccessLog]):  # type: ignore[misc]
    pass


class UnfoldAccessFailureLogAdmin(AccessFailureLogAdmin, ModelAdmin[AccessFailureLog]):  # type: ignore[misc]
    pass


if _LOCKOUT_ADMIN:
    admin.site.register(AccessAttempt, UnfoldAccessAttemptAdmin)
    admin.site.register(AccessLog, UnfoldAccessLogAdmin)
    admin.site.register(AccessFailureLog, UnfoldAccessFailureLogAdmin)


class UnfoldTaskSelectWidget(UnfoldAdminSelectWidget, TaskSelectWidget):  # type: ignore[misc]
    pass


class UnfoldPeriodicTaskForm(PeriodicTaskForm):  # type: ignore[misc]  # django-celery-beat is untyped
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["task"].widget = UnfoldAdminTextInputWidget()
        self.fields["regtask"].widget = UnfoldTaskSelectWidget()


class PeriodicTaskInline(TabularInline):  # type: ignore[type-arg]
    """The periodic tasks that use a schedule, as django-celery-beat's schedule pages list them."""

    model = PeriodicTask
    fields = ("name", "task", "args", "kwargs")
    readonly_fields = fields
    can_delete = False
    extra = 0
    show_change_link = True
    verbose_name = verbose_name_plural = "Periodic tasks using this schedule"

    def has_add_permission(self, request: Any, obj: Any = None) -> bool:
        return False


@admin.register(PeriodicTask)
class PeriodicTaskAdmin(BasePeriodicTaskAdmin, ModelAdmin[PeriodicTask]):  # type: ignore[misc]
    form = UnfoldPeriodicTaskForm


@admin.register(IntervalSchedule)
class IntervalScheduleAdmin(ModelAdmin):  # type: ignore[type-arg]
    inlines = [PeriodicTaskInline]


@admin.register(CrontabSchedule)
class CrontabScheduleAdmin(BaseCrontabScheduleAdmin, ModelAdmin[CrontabSchedule]):  # type: ignore[misc]
    inlines = [PeriodicTaskInline]


@admin.register(SolarSchedule)
class SolarScheduleAdmin(ModelAdmin):  # type: ignore[type-arg]
    inlines = [PeriodicTaskInline]


@admin.register(ClockedSchedule)
class ClockedScheduleAdmin(BaseClockedScheduleAdmin, ModelAdmin[ClockedSchedule]):  # type: ignore[misc]
    inlines = [PeriodicTaskInline]
