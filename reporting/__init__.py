"""Reporting: data catalog, dashboard, reconciliation exports and settlement imports."""
