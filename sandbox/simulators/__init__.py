"""Carrier simulators: a faithful fake server for each wire protocol, with fault injection.

They are served by PlayPay itself under /simulators/<protocol>/ when the SANDBOX setting
is on (the embedded default and the tests; never production), keep their state in memory,
and never touch PlayPay's database. Faults are chosen by the MSISDN's last four digits
(see `core.SCENARIOS`) or by each simulator's settings (`/_settings`).
"""
