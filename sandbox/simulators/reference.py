"""Two small JSON APIs that reporting reads as API datasets: an FX-rate service and the aggregator's balance.

`/simulators/fx/rates` answers like a daily reference-rate service (rates from EUR, one row per
currency); `/simulators/aggregator/v1/balance` is the aggregator's settlement balance: what it
collected for us, per currency, from the charges it holds. Both honour the simulators' latency
and outage settings (`POST /simulators/fx/_settings {"latency_ms": 3000}`), so timeouts can be
tried.
"""

from collections import defaultdict

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils import timezone

from sandbox.simulators import aggregator
from sandbox.simulators.core import simulator, simulator_view

# Units of each currency for one euro: fixed demo figures, not market rates.
RATES_FROM_EUR = {
    "EUR": "1",
    "GBP": "0.8500",
    "USD": "1.0800",
    "JPY": "162.00",
    "KWD": "0.3320",
    "CHF": "0.9500",
}


def _fault(name: str) -> HttpResponse | None:
    sim = simulator(name)
    # A number that matches no scenario: only the simulator-wide latency and outage settings apply.
    return sim.transport_fault("+0000000000")


@simulator_view
def fx_rates(request: HttpRequest) -> HttpResponse:
    fault = _fault("fx")
    if fault is not None:
        return fault
    today = timezone.now().date().isoformat()
    rows = [{"date": today, "base": "EUR", "quote": code, "rate": rate} for code, rate in RATES_FROM_EUR.items()]
    return JsonResponse({"provider": "PlayPay FX simulator", "base": "EUR", "date": today, "rates": rows})


@simulator_view
def aggregator_balance(request: HttpRequest) -> HttpResponse:
    fault = _fault("aggregator")
    if fault is not None:
        return fault
    sim = simulator("aggregator")
    collected: dict[str, int] = defaultdict(int)
    for charge in sim.records.find(aggregator.CHARGE_PREFIX, status="succeeded"):
        collected[str(charge.get("currency"))] += int(charge.get("amount") or 0)
    now = timezone.now().isoformat()
    rows = [
        {"as_of": now, "currency": currency, "available_minor": amount, "charges": "succeeded"}
        for currency, amount in sorted(collected.items())
    ] or [{"as_of": now, "currency": "GBP", "available_minor": 0, "charges": "succeeded"}]
    return JsonResponse({"merchant": "playpay", "balances": rows})
