"""Reporting services: exports, settlement imports and reconciliation."""
