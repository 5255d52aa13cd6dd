from django.conf import settings
from django.db import models
from django.db.models import Q


class JournalRecord(models.Model):
    """One interaction, as a JSON document with its correlation ids (PostgreSQL/SQLite backend).

    Append-only: the model refuses changes and deletes, and on PostgreSQL so do triggers.
    Records go only by retention: each kind past its time (`journal.services.expire`, the daily job), or all
    before a date (`manage.py purge_journal`). On PostgreSQL the table is partitioned by month
    (journal.partitions); its primary key there is (id, occurred_at).

    `record_id` is the document's own id (`journal.services.build`): a record written again (a write whose
    acknowledgement was lost, then shipped from the spool) is stored once. Records written before it have
    none. The unique constraint includes occurred_at, as a partitioned table's must; a record's is fixed.
    """

    occurred_at = models.DateTimeField(db_index=True)
    record_id = models.UUIDField(null=True, blank=True)
    kind = models.CharField(max_length=40)
    payment_id = models.CharField(max_length=36, blank=True)
    refund_id = models.CharField(max_length=36, blank=True)
    journey_id = models.CharField(max_length=128, blank=True)
    request_id = models.CharField(max_length=64, blank=True)
    app = models.CharField(max_length=100, blank=True)
    user_ref = models.CharField(max_length=128, blank=True)
    carrier = models.CharField(max_length=80, blank=True)
    carrier_reference = models.CharField(max_length=128, blank=True)
    msisdn_hash = models.CharField(max_length=64, blank=True)
    document = models.JSONField()

    class Meta:
        ordering = ["-occurred_at", "-id"]
        constraints = [models.UniqueConstraint(fields=["record_id", "occurred_at"], name="journal_record_once")]
        indexes = [
            models.Index(
                fields=["payment_id", "-occurred_at"], condition=~Q(payment_id=""), name="journal_payment_idx"
            ),
            models.Index(fields=["kind", "-occurred_at"], name="journal_kind_idx"),
            models.Index(fields=["carrier", "-occurred_at"], condition=~Q(carrier=""), name="journal_carrier_idx"),
            models.Index(fields=["app", "-occurred_at"], condition=~Q(app=""), name="journal_app_idx"),
            models.Index(
                fields=["msisdn_hash", "-occurred_at"], condition=~Q(msisdn_hash=""), name="journal_msisdn_idx"
            ),
            models.Index(
                fields=["carrier_reference"], condition=~Q(carrier_reference=""), name="journal_carrier_ref_idx"
            ),
            models.Index(fields=["journey_id"], condition=~Q(journey_id=""), name="journal_journey_idx"),
            models.Index(fields=["app", "user_ref"], condition=~Q(user_ref=""), name="journal_player_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.occurred_at:%Y-%m-%d %H:%M:%S}"

    def save(self, *args: object, **kwargs: object) -> None:
        if not self._state.adding:
            raise PermissionError("journal records are never changed")
        super().save(*args, **kwargs)  # type: ignore[arg-type]

    def delete(self, *args: object, **kwargs: object) -> tuple[int, dict[str, int]]:
        raise PermissionError("journal records are never deleted; retention drops whole periods")


class StaffAction(models.Model):
    """Who did what to which payment or carrier in the admin, when and why."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    action = models.CharField(max_length=50)
    object_type = models.CharField(max_length=50)
    object_id = models.CharField(max_length=64)
    object_repr = models.CharField(
        "object", max_length=200, blank=True, help_text="Its name when the action was taken."
    )
    reason = models.CharField(max_length=255, blank=True)
    outcome = models.CharField(max_length=255, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]
        indexes = [models.Index(fields=["object_type", "object_id"])]

    def __str__(self) -> str:
        return f"{self.user_id} {self.action} {self.object_type}:{self.object_id}"
