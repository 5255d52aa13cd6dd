"""Carrier adapters: one module per wire protocol, all behind the interface in `base`.

Adapters do I/O only; they never touch the database. Callers build a
`CarrierConfig` from the Carrier row and get an adapter with `adapter_for`.

The registry maps a protocol to its adapter class. The sandbox protocol's adapter is not
part of the product: the sandbox app registers it (`register_adapter`) when it is installed.
"""

from django.conf import settings

from carriers.adapters.aggregator import AggregatorAdapter
from carriers.adapters.base import CarrierAdapter, CarrierConfig
from carriers.adapters.camara import CamaraAdapter
from carriers.adapters.parlayx import ParlayXAdapter
from carriers.errors import ProtocolUnavailable
from carriers.models import Carrier, Protocol

_ADAPTERS: dict[str, type[CarrierAdapter]] = {
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
        deduplicates_reference_code=carrier.deduplicates_reference_code,
    )


def carrier_queue(carrier: Carrier) -> str:
    """The Celery queue of a carrier's outbound calls, so that workers can be scaled per carrier."""
    return f"carrier.{carrier.slug}"


def register_adapter(protocol: str, adapter: type[CarrierAdapter]) -> None:
    """Plug in the adapter of a protocol that lives outside this package (the sandbox's)."""
    _ADAPTERS[protocol] = adapter


def adapter_class(protocol: str) -> type[CarrierAdapter]:
    try:
        return _ADAPTERS[protocol]
    except KeyError:
        if protocol == Protocol.SANDBOX:
            raise ProtocolUnavailable(
                "The sandbox protocol is a test carrier, available only when the sandbox is on "
                "(SANDBOX=true, never in production): give this carrier a real protocol or deactivate it.",
                protocol=protocol,
            ) from None
        raise ProtocolUnavailable(
            f"No adapter is registered for the protocol {protocol!r}.", protocol=protocol
        ) from None


def adapter_classes() -> dict[str, type[CarrierAdapter]]:
    return dict(_ADAPTERS)


def adapter_for(carrier: Carrier) -> CarrierAdapter:
    return adapter_class(carrier.protocol)(config_for(carrier))
