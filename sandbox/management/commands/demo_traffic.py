import logging
import os
from argparse import ArgumentParser, ArgumentTypeError
from collections.abc import Callable
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from sandbox.demo import issue_demo_traffic_key
from sandbox.traffic import TrafficError, TrafficPlan, run_demo_traffic, wait_until_up


def _bounded(kind: Callable[[str], Any], low: float, high: float) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        value = kind(text)
        if not low <= value <= high:
            raise ArgumentTypeError(f"between {low:g} and {high:g}")
        return value

    return parse


class Command(BaseCommand):
    help = (
        "Play game backends and players against a running PlayPay over HTTP: store journeys (funnel events), "
        "payments on the demo carriers (PIN and one-click), some declines and refunds, subscriptions to the demo "
        "plan (PIN opt-in) on the carriers that take them. Stops by itself."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--base-url", default="http://127.0.0.1:8000", help="the running server")
        parser.add_argument(
            "--api-key",
            default=os.environ.get("PLAYPAY_API_KEY", ""),
            help="the demo app's key (default: $PLAYPAY_API_KEY; without one, a new key of the demo app "
            "is issued in this command's database, which must be the server's)",
        )
        parser.add_argument("--duration", type=_bounded(float, 1, 3600), default=60.0, help="seconds (≤ 3600)")
        parser.add_argument("--rate", type=_bounded(float, 0.1, 50), default=2.0, help="players per second")
        parser.add_argument("--count", type=_bounded(int, 1, 100_000), default=None, help="stop after this many")
        parser.add_argument("--failure-share", type=_bounded(float, 0, 1), default=0.15, help="declined payers")
        parser.add_argument("--refund-share", type=_bounded(float, 0, 1), default=0.2, help="refunded successes")
        parser.add_argument(
            "--subscription-share",
            type=_bounded(float, 0, 1),
            default=0.2,
            help="payers who subscribe to the demo plan (PIN opt-in) instead of buying",
        )
        parser.add_argument("--seed", type=int, default=None, help="repeatable players and carriers")
        parser.add_argument("--wait", type=_bounded(float, 0, 600), default=0.0, help="seconds to wait for the server")

    def handle(self, *args: Any, **options: Any) -> None:
        base_url = options["base_url"].rstrip("/")
        logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request would drown the summary
        try:
            if options["wait"]:
                wait_until_up(base_url, seconds=options["wait"])
            api_key = options["api_key"] or issue_demo_traffic_key()
            if not api_key:
                raise CommandError("No demo app in this database: run seed_demo, or pass --api-key.")
            plan = TrafficPlan(
                base_url=base_url,
                api_key=api_key,
                duration_seconds=options["duration"],
                players_per_second=options["rate"],
                max_players=options["count"],
                failure_share=options["failure_share"],
                refund_share=options["refund_share"],
                subscription_share=options["subscription_share"],
                seed=options["seed"],
            )
            self.stdout.write(f"Demo traffic against {base_url} for up to {plan.duration_seconds:g} s…")
            summary = run_demo_traffic(plan, log=self.stdout.write if options["verbosity"] > 1 else None)
        except TrafficError as error:
            raise CommandError(str(error)) from error
        for line in summary.lines():
            self.stdout.write(line)
