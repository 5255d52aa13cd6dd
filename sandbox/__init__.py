"""The sandbox: PlayPay's demo and test mode, never part of a production deployment.

It holds what only exists to try PlayPay without real carriers: the in-process sandbox carrier
(test PIN 1234, outcomes by the MSISDN's last digits), a simulator of every carrier protocol with
fault injection (the aggregator's renewal schedule run by a periodic task of its own), fakes of the
reference-data APIs reporting reads (FX rates, the aggregator's balance), the demo data (`seed_demo`)
and the demo traffic (`demo_traffic`).

It is installed and its simulators are routed under /simulators/ only when the SANDBOX setting
is on (the embedded default and the tests); production refuses to start with it on. Nothing in
the core apps imports it: it plugs its carrier adapter into the carriers' registry when it loads.
"""
