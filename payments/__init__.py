"""Payments: game-backend apps and their API keys, payments and their state machine, idempotency."""
