"""Carrier adapters: one module per wire protocol, all behind the interface in `base`.

Adapters do I/O only; they never touch the database. Callers build a
`CarrierConfig` from the Carrier row and get an adapter with `adapter_for`.
"""

from django.conf import settings

from carriers.adapters.aggregator import AggregatorAdapter
from carriers.adapters.base import CarrierAdapter, CarrierConfig
from carriers.adapters.camara import CamaraAdapter
from carriers.adapters.parlayx import ParlayXAdapter
from carriers.adapters.sandbox import SandboxAdapter
from carriers.models import Carrier, Protocol

_ADAPTERS: dict[str, type[CarrierAdapter]] = {
    Protocol.SANDBOX: SandboxAdapter,
    Protocol.AGGREGATOR: AggregatorAdapter,
    Protocol.CAMARA: CamaraAdapter,
    Protocol.PARLAYX: ParlayXAdapter,
}


def config_for(carrier: Carrier) -> CarrierConfig:
    return CarrierConfig(
        slug=carrier.slug,
        endpoint=carrier.endpoint,
        credentials=carrier.credentials,
        connect_timeout=carrier.connect_timeout_ms / 1000,
        read_timeout=carrier.read_timeout_ms / 1000,
        notification_url=f"{settings.PUBLIC_BASE_URL}/api/v1/carriers/{carrier.slug}/notifications/",
    )


def carrier_queue(carrier: Carrier) -> str:
    """The Celery queue of a carrier's outbound calls, so that workers can be scaled per carrier."""
    return f"carrier.{carrier.slug}"


def adapter_class(protocol: str) -> type[CarrierAdapter]:
    return _ADAPTERS[protocol]


def adapter_classes() -> dict[str, type[CarrierAdapter]]:
    return dict(_ADAPTERS)


def adapter_for(carrier: Carrier) -> CarrierAdapter:
    return _ADAPTERS[carrier.protocol](config_for(carrier))
