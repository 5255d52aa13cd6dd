"""Carrier simulators: a faithful fake server for each wire protocol, with fault injection.

They are served by PlayPay itself under /simulators/<protocol>/ when the SANDBOX setting
is on (the embedded default and the tests; never production). They keep their state in the
sandbox app's own tables (`sandbox.models`, through `core.Simulator`), never in PlayPay's,
so that every process serving them behaves as one carrier. Faults are chosen by the MSISDN's
last four digits (see `core.SCENARIOS`) or by each simulator's settings (`/_settings`).
What a carrier does on its own time (the aggregator's renewals) is a periodic task (`sandbox.tasks`).
"""
