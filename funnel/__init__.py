"""Conversion funnel: journeys, funnel events, funnel definitions and rollups."""
