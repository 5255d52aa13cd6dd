"""What the simulators remember, shared by every process that serves them (as a carrier's servers share theirs).

Each table is keyed by the simulator's name (`camara`, `parlayx`, `aggregator`, `fx`). The sandbox app, and so
these tables, exist only where SANDBOX is on; nothing outside the sandbox reads them.
"""

import json
from decimal import Decimal
from typing import Any

from django.db import models


class StateEncoder(json.JSONEncoder):
    """JSON that keeps a Decimal a Decimal (amounts are exact), read back by StateDecoder."""

    def default(self, o: Any) -> Any:
        if isinstance(o, Decimal):
            return {"__decimal__": str(o)}
        return super().default(o)


def _revive(value: dict[str, Any]) -> Any:
    if value.keys() == {"__decimal__"}:
        return Decimal(value["__decimal__"])
    return value


class StateDecoder(json.JSONDecoder):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("object_hook", _revive)
        super().__init__(*args, **kwargs)


class SimulatorState(models.Model):
    """A simulator's settings (only those changed from the defaults) and its generation, bumped by each reset."""

    name = models.CharField(primary_key=True, max_length=50)
    settings = models.JSONField(default=dict)
    generation = models.PositiveIntegerField(default=0)

    # Declared: type checking runs without the sandbox installed.
    objects: models.Manager["SimulatorState"] = models.Manager()

    def __str__(self) -> str:
        return self.name


class SimulatorRecord(models.Model):
    """One thing a simulator keeps by key: a token, a payment, a reservation, a refund, an idempotency key."""

    simulator = models.CharField(max_length=50)
    key = models.CharField(max_length=255)
    data = models.JSONField(encoder=StateEncoder, decoder=StateDecoder)

    objects: models.Manager["SimulatorRecord"] = models.Manager()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["simulator", "key"], name="sandbox_record_unique_key")]

    def __str__(self) -> str:
        return f"{self.simulator}:{self.key}"


class SimulatorEntry(models.Model):
    """What a simulator did, in order: an SMS sent, a charge applied to a bill, a callback posted."""

    class Kind(models.TextChoices):
        SMS = "sms"
        CHARGE = "charge"
        CALLBACK = "callback"

    simulator = models.CharField(max_length=50)
    kind = models.CharField(max_length=10, choices=Kind.choices)
    # The MSISDN of an SMS or a charge; the URL of a callback.
    subject = models.TextField()
    data = models.JSONField()

    objects: models.Manager["SimulatorEntry"] = models.Manager()

    class Meta:
        indexes = [models.Index(fields=["simulator", "kind", "subject"], name="sandbox_entry_lookup")]

    def __str__(self) -> str:
        return f"{self.simulator} {self.kind} {self.subject}"
