"""Subscriptions: plans, subscriptions and their periods, and the renewal engine that charges each period once."""
