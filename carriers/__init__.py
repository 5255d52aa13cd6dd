"""Carriers: countries, mobile operators, price points, MSISDN routing and the adapters that speak each protocol."""
